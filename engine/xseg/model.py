"""XSeg models wherever they live: TorchSAE XSeg checkpoints, DFL XSeg folders, exported ONNX files.

    net, face_type, step = load_xseg("runs/xseg")                  # run folder, step folder, model.pt,
                                                                     # DFL folder (XSeg_256.npy) or file
    masker = open_masker("runs/xseg")                               # also "xseg.onnx"
    masks = masker(faces)      # (N, H, W, 3) BGR [0, 1] -> (N, H, W, 1): DFL's XSegNet.extract

A TorchSAE XSeg checkpoint is an ordinary checkpoint (engine.train.checkpoint) whose stored recipe has
`kind = "xseg"`; the [xseg] table gives the network (base_ch, resolution) and the face type. A DFL XSeg
folder holds `XSeg_256.npy` (weights) and usually `XSeg_data.dat`, whose options give the face type (DFL's
apply reads it from there too). DFL's weight files are read with the restricted unpickler; DFL's names
and layouts (`dfl_xseg_arrays`, `load_dfl_xseg_arrays`: torch ``conv01.frn.eps`` <-> DFL
``XSeg/conv01/frn/eps:0``, kernels by engine.dfl.keymap's rank rule) are the same ones that load DFL's
recorded XSeg weights in the golden test.

`Masker` wraps any of them as DFL's `XSegNet.extract` (docs/dfl.md §7.3: sigmoid, clipped to [0, 1], values
below 0.1 set to 0) on NHWC BGR faces; faces of another size than the network's are resized to it
(bilinear) and the masks back, so the merger's 256² crops work with any trained resolution.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch

from engine import recipe as recipe_mod
from engine.dfl.files import read_data_file, read_part_file
from engine.dfl.keymap import dfl_shape_of, dfl_to_torch_array, torch_to_dfl_array
from engine.errors import CheckpointError, TorchSAEError
from engine.export.runtime import ort_providers
from engine.export.verify import ort_session
from engine.faces.facetypes import FaceType
from engine.modules.xseg import XSeg, XSegExtractor
from engine.recipe.specs import Recipe
from engine.train import checkpoint as ck

__all__ = ["XSEG_WEIGHTS_NAME", "XSEG_DATA_NAME", "build_xseg", "load_xseg", "xseg_recipe_of", "dfl_face_type",
           "dfl_xseg_arrays", "load_dfl_xseg_arrays", "xseg_weights_path", "read_dfl_xseg", "Masker", "OnnxMasker",
           "open_masker", "is_dfl_xseg_folder"]

log = logging.getLogger("torchsae.xseg")

XSEG_WEIGHTS_NAME = "XSeg_256.npy"  # DFL's XSeg weight file (docs/dfl.md §8.2)
XSEG_DATA_NAME = "XSeg_data.dat"
_DFL_SCOPE = "XSeg"


def build_xseg(r: Recipe) -> XSeg:
    """A fresh XSeg for an XSeg recipe (DFL's initialisation: glorot-uniform kernels, zero biases)."""
    return XSeg(base_ch=r.xseg.base_ch, resolution=r.xseg.resolution)


def is_dfl_xseg_folder(path: Path) -> bool:
    return (path.is_dir() and (path / XSEG_WEIGHTS_NAME).is_file()) or (path.is_file() and path.suffix == ".npy")


def xseg_recipe_of(stored_toml: str, source: str) -> Recipe:
    """The XSeg recipe stored in a checkpoint; CheckpointError when the checkpoint is not an XSeg model."""
    r = recipe_mod.loads(stored_toml, source=f"{source} (stored recipe)")
    if r.kind != "xseg":
        raise CheckpointError(f"{source}: a {r.kind.upper()} checkpoint, not an XSeg model (train one with "
                              "`torchsae xseg train RECIPE`, or give DFL's XSeg folder with XSeg_256.npy)")
    return r


def dfl_face_type(folder: Path) -> FaceType | None:
    """The face type DFL's XSeg_data.dat records (options['face_type'], 'wf' etc.), or None without one."""
    dat = folder / XSEG_DATA_NAME
    if not dat.is_file():
        return None
    opts = read_data_file(dat).get("options", {})
    ft = opts.get("face_type")
    return None if ft is None else FaceType.parse(ft, f"{dat}: options['face_type']")


def _torch_key(dfl_key: str) -> str:
    name = dfl_key[:-2] if dfl_key.endswith(":0") else dfl_key
    if name.startswith(_DFL_SCOPE + "/"):
        name = name[len(_DFL_SCOPE) + 1:]
    return name.replace("/", ".")


def load_dfl_xseg_arrays(net: XSeg, arrays: dict[str, np.ndarray], source: str = "<arrays>") -> None:
    """Load DFL-named XSeg weights into `net` (keys with or without the 'XSeg/' scope, with or without ':0').

    Every parameter must be present with DFL's shape for it; a missing, extra or mis-shaped key raises
    CheckpointError naming `source`, the key and the expected shape (DFL itself would silently re-initialise
    the whole model, docs/dfl.md §8.2; for merging that would give a meaningless mask).
    """
    params = dict(net.named_parameters())
    staged: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in arrays.items():
        tk = _torch_key(key)
        if tk not in params:
            unknown.append(key)
            continue
        arr = np.asarray(value)
        want = tuple(params[tk].shape)
        t = dfl_to_torch_array(arr)
        if tuple(t.shape) != want:
            dfl_shape = dfl_shape_of(want)
            raise CheckpointError(f"{source}: '{key}' has shape {tuple(arr.shape)}, which does not fit this XSeg "
                                  f"(base_ch {net.base_ch}; expected DFL shape {dfl_shape})")
        staged[tk] = torch.from_numpy(t)
    missing = sorted(set(params) - set(staged))
    if unknown or missing:
        parts = []
        if missing:
            names = [_DFL_SCOPE + "/" + m.replace(".", "/") + ":0" for m in missing[:3]]
            parts.append(f"missing {len(missing)} weight(s), e.g. {names}")
        if unknown:
            parts.append(f"{len(unknown)} unknown key(s), e.g. {unknown[:3]}")
        raise CheckpointError(f"{source}: not the weights of DFL's XSeg (base_ch {net.base_ch}): " + "; ".join(parts))
    with torch.no_grad():
        for k, t in staged.items():
            params[k].copy_(t)


def dfl_xseg_arrays(net: XSeg, scope: bool = False) -> dict[str, np.ndarray]:
    """`net`'s weights in DFL's names and layouts: keys 'conv01/conv/weight:0' as inside XSeg_256.npy
    (or 'XSeg/conv01/conv/weight:0' with ``scope=True``)."""
    pre = _DFL_SCOPE + "/" if scope else ""
    return {pre + k.replace(".", "/") + ":0": torch_to_dfl_array(p.detach().cpu().numpy()) for k, p in net.named_parameters()}


def xseg_weights_path(path: str | Path) -> Path:
    """The XSeg weight file for `path`: the file itself, or ``<folder>/XSeg_256.npy`` (DFL's name).

    CheckpointError naming the missing file otherwise.
    """
    p = Path(path)
    f = p / XSEG_WEIGHTS_NAME if p.is_dir() else p
    if not f.is_file():
        where = f"folder {p} has no {XSEG_WEIGHTS_NAME}" if p.is_dir() else f"{p}: no such file"
        raise CheckpointError(f"XSeg model: {where} (expected DFL's trained XSeg weights '{XSEG_WEIGHTS_NAME}', "
                              "as DFL's XSeg trainer writes them into its model folder)")
    return f


def read_dfl_xseg(path: str | Path) -> tuple[XSeg, Path]:
    """(XSeg holding DFL's weights, the file read) for DFL's XSeg_256.npy at `path` (the file, or a folder
    holding it), read with the restricted unpickler.

    The base width is read from the file (conv01's kernel has base_ch outputs): DFL always trains 32; any
    other width (e.g. a small test model) loads the same way.
    """
    f = xseg_weights_path(path)
    arrays = read_part_file(f)
    first = next((v for k, v in arrays.items() if _torch_key(k) == "conv01.conv.weight"), None)
    if first is None or np.ndim(first) != 4:
        raise CheckpointError(f"{f}: not DFL XSeg weights (no 4-D 'conv01/conv/weight:0'; found e.g. {list(arrays)[:3]})")
    net = XSeg(base_ch=int(np.shape(first)[3]))
    load_dfl_xseg_arrays(net, arrays, source=str(f))
    return net, f


def load_xseg(path: str | Path) -> tuple[XSeg, FaceType | None, int, Recipe | None]:
    """(network on the CPU in eval mode, face type or None, step, stored XSeg recipe or None) from a TorchSAE
    XSeg checkpoint (file, step folder or run folder) or a DFL XSeg folder / XSeg_256.npy."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such XSeg model (expected a TorchSAE XSeg run/checkpoint, or DFL's XSeg "
                              f"folder with {XSEG_WEIGHTS_NAME})")
    if is_dfl_xseg_folder(p):
        net, f = read_dfl_xseg(p)
        folder = f.parent
        ft = dfl_face_type(folder)
        step = 0
        if (folder / XSEG_DATA_NAME).is_file():
            step = int(read_data_file(folder / XSEG_DATA_NAME).get("iter", 0) or 0)
        return net.eval(), ft, step, None
    if p.is_dir() and not (p / ck.MODEL_FILE).is_file() and not (p / "checkpoints").is_dir():
        raise CheckpointError(f"XSeg model: folder {p} has no {XSEG_WEIGHTS_NAME} (DFL's XSeg model) and no TorchSAE "
                              f"XSeg checkpoint ({ck.MODEL_FILE} or checkpoints/)")
    payload = ck.load_model_payload(p)
    r = xseg_recipe_of(payload["recipe_toml"], str(p))
    net = build_xseg(r)
    try:
        net.load_state_dict(payload["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{p}: weights do not fit its own recipe: {str(e).splitlines()[0]}") from None
    return net.eval(), FaceType.parse(r.xseg.face_type, "[xseg].face_type"), int(payload["step"]), r


def _resize_batch(x: np.ndarray, size: int) -> np.ndarray:
    return np.stack([cv2.resize(np.ascontiguousarray(f), (size, size), interpolation=cv2.INTER_LINEAR).reshape(
        size, size, -1) for f in x])


class Masker:
    """DFL's XSegNet.extract for a torch XSeg: (N, H, W, 3) or (H, W, 3) BGR [0, 1] -> (N, H, W, 1) or
    (H, W, 1) float32 masks. `face_type` is the model's (None when unknown)."""

    def __init__(self, net: XSeg, face_type: FaceType | None = None, device: str | torch.device | None = None,
                 batch_size: int = 8, source: str = "<xseg>"):
        self.extract = XSegExtractor(net, device=device or "cpu", batch_size=batch_size)
        self.resolution = net.resolution
        self.face_type = face_type
        self.source = source

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.extract(x)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        x = np.asarray(img, dtype=np.float32)
        single = x.ndim == 3
        if single:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] != x.shape[2]:
            raise TorchSAEError(f"XSeg {self.source}: expected square BGR faces (N, H, H, 3), got {x.shape}")
        size = x.shape[1]
        if size != self.resolution:
            x = _resize_batch(x, self.resolution)
        m = self._run(x)
        if size != self.resolution:
            m = _resize_batch(m, size)
            m[m < 0.1] = 0.0
        return m[0] if single else m


class OnnxMasker(Masker):
    """An exported XSeg ONNX (`torchsae xseg export`, DFL's XSeg_model.onnx contract: input `in_face:0`
    (N, R, R, 3) NHWC BGR [0, 1], output `out_mask:0` (N, R, R, 1) sigmoid) in ONNX Runtime, with extract's
    post-processing. The face type comes from the file's `torchsae.face_type` metadata when present."""

    def __init__(self, path: str | Path, providers: list[str] | None = None):
        self.source = str(path)
        try:
            self.sess = ort_session(Path(path), providers or ort_providers())
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise TorchSAEError(f"{path}: ONNX Runtime cannot load it: {str(e).splitlines()[0]}") from None
        inp = self.sess.get_inputs()
        outs = self.sess.get_outputs()
        if len(inp) != 1 or len(inp[0].shape) != 4 or inp[0].shape[3] != 3 or len(outs) != 1:
            raise TorchSAEError(f"{path}: not an XSeg ONNX (expected one NHWC input (N, R, R, 3) and one mask output; "
                                f"got inputs {[(i.name, i.shape) for i in inp]}, outputs {[o.name for o in outs]})")
        self.input_name = inp[0].name
        self.resolution = int(inp[0].shape[1])
        meta = self.sess.get_modelmeta().custom_metadata_map
        ft = meta.get("torchsae.face_type")
        self.face_type = FaceType.parse(ft, f"{path}: torchsae.face_type") if ft else None

    def _run(self, x: np.ndarray) -> np.ndarray:
        m = self.sess.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]
        m = np.clip(np.asarray(m, dtype=np.float32), 0.0, 1.0)
        m[m < 0.1] = 0.0
        return m


def open_masker(path: str | Path, device: str | torch.device | None = None) -> Masker:
    """A Masker for an XSeg model in any form: `.onnx`, TorchSAE XSeg checkpoint, DFL XSeg folder/file."""
    p = Path(path)
    if p.suffix.lower() == ".onnx":
        if not p.is_file():
            raise CheckpointError(f"{p}: no such ONNX file")
        return OnnxMasker(p)
    net, ft, _step, _r = load_xseg(p)
    log.info("XSeg: loaded %s (base_ch %d, resolution %d, face type %s)", p, net.base_ch, net.resolution,
             ft.long_name if ft is not None else "not recorded")
    return Masker(net, ft, device=device, source=str(p))

