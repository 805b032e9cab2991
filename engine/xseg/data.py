"""XSeg training batches: labelled faces -> (image, mask) batches, deterministic and resumable.

    loader = make_xseg_loader(faces, resolution=256, face_type="wf", batch_size=4, seed=0, workers=2,
                              pipeline="auto", device=device)
    batch = next(loader)     # {"image": (B, 3, R, R) BGR [0, 1], "mask": (B, 1, R, R) {0, 1}}
    state = loader.state_dict()   # checkpointed; load_state_dict continues after the last batch returned

Two pipelines ([xseg].pipeline), the same planner and the same distributions:
- "dfl": every sample augmented in the loader process with numpy / OpenCV, DFL's own calls in DFL's order
  (engine.xseg.augment, the oracle); batches are CPU tensors;
- "device": loader processes decode once into a uint8 cache and ship the rows and each sample's draws,
  the training device augments the whole batch (engine.xseg.device); batches arrive on the device.
"auto" is "device" on CUDA; on the CPU it is CPU_PIPELINE (measured, bench/README.md, "XSeg pipelines").

The machinery is SAEHD's loader (engine.data.loader.FaceLoader: worker processes, pinned memory, the
state of the last batch *returned*): this module supplies its two halves, a planner (which faces batch k
uses, from `seed`) and a map-style dataset (what a worker does with a plan).

- Faces are drawn from shuffled epochs of the training faces (DFL's shuffle_idxs); each sample also gets a
  background face from an independent shuffled order (DFL's bg_shuffle_idxs) and a 32-bit key that seeds
  the RandomState of its augmentation ("dfl": engine.xseg.augment) or its parameter stream ("device":
  engine.xseg.device). DFL draws all of these from unseeded RNGs.
- Normal mode: engine.xseg.augment.image_and_mask + augment (docs/dfl.md §5.7); with `augment=False` the faces and
  labels as they are (for checks, not DFL).
- Pretrain mode (docs/dfl.md §7.2): the pretrain faceset through SAEHD's SampleProcessor geometry — face-type
  conversion, then grid warp + affine + flip with DFL's default SampleProcessor ranges (rotation ±10°,
  scale ±0.05, tx/ty ±0.05) — giving `image` (BGR) and `target`, its grayscale (cv2 BGR2GRAY of the same
  warped image): {"image": (B, 3, R, R), "target": (B, 1, R, R)}.
A face that no longer decodes is replaced by the next one in the list and reported by the loader.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import attrs
import cv2
import numpy as np
import torch

from engine.data.dataset import first_usable
from engine.data.device import DeviceLoader
from engine.data.loader import FaceLoader
from engine.data.sample import SampleOptions, draw_augmentation, image_to_model
from engine.data.yaw import ShuffleIndex
from engine.errors import DataError
from engine.faces.faceset import FaceData
from engine.faces.facetypes import FaceType
from engine.xseg.augment import augment, image_and_mask
from engine.xseg.device import XSegAugment, XSegDeviceBatches
from engine.xseg.faces import XSegFace
from kernels.warp import warp_by_params

__all__ = ["XSegPlan", "XSegPlanner", "XSegBatches", "make_xseg_loader", "resolve_pipeline", "XSEG_BATCH_KEYS",
           "PIPELINES", "CPU_PIPELINE"]

log = logging.getLogger("torchsae.xseg")

XSEG_BATCH_KEYS = ("image", "mask")
PIPELINES = ("auto", "device", "dfl")
# What "auto" picks when training on the CPU (measured: bench/README.md, "XSeg pipelines")
CPU_PIPELINE = "device"
CPU_PIPELINE_WHY = "batched augmentation in the training process"
_KEY_FACE, _KEY_BG, _KEY_SAMPLE = 11, 12, 13


@attrs.frozen
class XSegPlan:
    """Batch `step`: face indices, background face indices and per-sample keys."""

    step: int
    faces: tuple[int, ...]
    backgrounds: tuple[int, ...]
    keys: tuple[int, ...]

    def shard(self, rank: int, world_size: int) -> XSegPlan:
        if world_size == 1:
            return self
        n = len(self.faces)
        a, b = rank * n // world_size, (rank + 1) * n // world_size
        return XSegPlan(self.step, self.faces[a:b], self.backgrounds[a:b], self.keys[a:b])


class XSegPlanner:
    """`next_plan()` gives batch 0, 1, 2, ... of `n` faces for `seed`; its state is a few ints."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n < 1:
            raise DataError("XSeg: no training faces")
        if batch_size < 1:
            raise DataError(f"batch_size = {batch_size}: expected at least 1")
        self.batch_size, self.seed, self.step = int(batch_size), int(seed), 0
        self.faces = ShuffleIndex(n, self.seed, (_KEY_FACE,))
        self.backgrounds = ShuffleIndex(n, self.seed, (_KEY_BG,))

    def next_plan(self) -> XSegPlan:
        k, b = self.step, self.batch_size
        ss = np.random.SeedSequence(self.seed, spawn_key=(_KEY_SAMPLE, k))
        keys = np.random.Generator(np.random.PCG64(ss)).integers(0, 2**32, size=b, dtype=np.uint64)
        faces = tuple(self.faces.next() for _ in range(b))
        bgs = tuple(self.backgrounds.next() for _ in range(b))
        self.step += 1
        return XSegPlan(k, faces, bgs, tuple(int(x) for x in keys))

    def state_dict(self) -> dict:
        return {"step": self.step, "faces": self.faces.state_dict(), "backgrounds": self.backgrounds.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.faces.load_state_dict(state["faces"])
        self.backgrounds.load_state_dict(state["backgrounds"])


def _nchw(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2)))


class XSegBatches(torch.utils.data.Dataset):
    """Worker side: an XSegPlan -> {"image", "mask"} (or {"image", "target"} in pretrain), plus the loader's
    bookkeeping keys "_step" and "_bad". A batch is a pure function of its plan and the files."""

    mode = "dfl"  # the per-sample numpy/OpenCV pipeline (FaceLoader.describe)

    def __init__(self, faces: Sequence[XSegFace], *, resolution: int, face_type: str | FaceType, augment: bool = True,
                 pretrain: bool = False, label: str = "xseg"):
        self.faces = list(faces)
        self.resolution = int(resolution)
        self.face_type = FaceType.parse(face_type, "[xseg].face_type")
        self.augment = bool(augment)
        self.pretrain = bool(pretrain)
        self.label = label
        if pretrain:
            self.opts = SampleOptions(resolution=self.resolution, face_type=self.face_type, random_warp=True,
                                      random_flip=True, scale_range=(-0.05, 0.05))

    def __len__(self) -> int:  # map-style, indexed by plans; the length is not used
        return len(self.faces)

    def close(self) -> None:
        pass

    def _first_usable(self, i: int, bad: list, try_load):
        return first_usable(len(self.faces), i, bad, try_load, lambda j: False, lambda j: None, self.label,
                            lambda j: self.faces[j].name)[1]

    def _load(self, i: int, bad: list) -> tuple[np.ndarray, np.ndarray]:
        return self._first_usable(i, bad, lambda j: image_and_mask(self.faces[j].sample, self.faces[j].polys,
                                                                   self.resolution, self.face_type))

    def _pretrain_sample(self, i: int, key: int, bad: list) -> tuple[np.ndarray, np.ndarray]:
        def make(j: int) -> tuple[np.ndarray, np.ndarray]:
            s = self.faces[j].sample
            face = FaceData(image=s.load_image(), landmarks=s.landmarks, face_type=s.face_type, name=s.name)
            params, _ = draw_augmentation(int(key) & 0x7FFFFFFF, self.opts)
            img = image_to_model(face.image.astype(np.float32) / 255.0, face, self.opts)
            img = warp_by_params(params, img, can_warp=True, can_transform=True, can_flip=True,
                                 border_replicate=True, cv2_inter=cv2.INTER_CUBIC)
            img = np.clip(img.astype(np.float32), 0, 1)
            return img, cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[..., None]

        return self._first_usable(i, bad, make)

    def __getitem__(self, plan: XSegPlan) -> dict:
        bad: list = []
        images, targets = [], []
        for i, bg_i, key in zip(plan.faces, plan.backgrounds, plan.keys):
            if self.pretrain:
                img, tgt = self._pretrain_sample(i, key, bad)
            else:
                img, tgt = self._load(i, bad)
                if self.augment:
                    bg = None
                    if len(self.faces) > 1:
                        bg = self._load(bg_i, bad)
                    img, tgt = augment(img, tgt, bg, np.random.RandomState(int(key) & 0xFFFFFFFF))
                else:
                    img = np.clip(img, 0, 1)
            images.append(img)
            targets.append(tgt)
        out = {"image": _nchw(images), ("target" if self.pretrain else "mask"): _nchw(targets)}
        out["_step"] = plan.step
        out["_bad"] = bad
        return out


def resolve_pipeline(value: str, device: torch.device) -> tuple[str, str]:
    """[xseg].pipeline -> (pipeline, why): "auto" is "device" on CUDA and CPU_PIPELINE elsewhere."""
    if value not in PIPELINES:
        raise DataError(f"[xseg].pipeline = {value!r}: expected one of {', '.join(PIPELINES)}")
    if value != "auto":
        return value, "requested"
    if device.type == "cuda":
        return "device", "auto: training on CUDA, augmentation on the GPU"
    return CPU_PIPELINE, f"auto: training on {device.type}, {CPU_PIPELINE_WHY}"


def make_xseg_loader(faces: Sequence[XSegFace], *, resolution: int, face_type: str, batch_size: int, seed: int,
                     workers: int = 2, augment: bool = True, pretrain: bool = False, rank: int = 0,
                     world_size: int = 1, pipeline: str = "dfl", device: torch.device | str | None = None,
                     warp_impl: str = "auto", cache_dir=None):
    """An endless, resumable loader of XSeg batches (module doc): pipeline "dfl" gives a FaceLoader of CPU
    batches, "device" a DeviceLoader whose batches are augmented on `device` (engine.xseg.device); "auto"
    is resolved for `device` (default CPU) by `resolve_pipeline` and logged."""
    dev = torch.device(device if device is not None else "cpu")
    mode, why = resolve_pipeline(pipeline, dev)
    if rank == 0:
        log.info("XSeg data: pipeline %s (%s), %d loader worker%s", mode, why, workers, "" if workers == 1 else "s")
    planner = XSegPlanner(len(faces), batch_size, seed)
    if mode == "dfl":
        batches = XSegBatches(faces, resolution=resolution, face_type=face_type, augment=augment, pretrain=pretrain)
        return FaceLoader(batches, planner, workers=workers, rank=rank, world_size=world_size)
    batches = XSegDeviceBatches(faces, resolution=resolution, face_type=face_type, augment=augment,
                                pretrain=pretrain, cache_dir=cache_dir)
    loader = FaceLoader(batches, planner, workers=workers, rank=rank, world_size=world_size,
                        pin_memory=dev.type == "cuda")
    return DeviceLoader(loader, XSegAugment(resolution, pretrain=pretrain, augment=augment, warp_impl=warp_impl), dev)
