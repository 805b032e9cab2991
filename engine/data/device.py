"""The device pipeline (`[data].pipeline = "device"`): loader processes read, the training device augments.

    loader = build_loader(data_spec, ..., mode="device", device=torch.device("cuda"))
    batch = next(loader)     # the eight SAEHD tensors, already on the device, float32 NCHW

Split of the work (docs/dfl.md §5.4, per side of a batch):

    loader process (DeviceBatches)                         training device (DeviceAugment)
    ----------------------------------------------------  ------------------------------------------------
    decode each face once into the model-resolution cache  uint8 -> float, NHWC -> NCHW
      (engine.data.dataset.FaceCache: uint8 image, FULL_FACE  colour transfer rct/lct/mkl/idt/sot (src, ct on)
      and EYES_MOUTH masks; later epochs never decode)      HSV shift of the network input (src)
    gather the batch's rows (uint8: 5 bytes per pixel,      random warp + affine + flip (kernels.warp:
      + 3 for the ct reference) into shared memory           Triton on CUDA, the C kernel on CPU)
    draw each sample's augmentation parameters from its     FULL_FACE / EYES_MOUTH mask warp, EYES_MOUTH
      own key (warp lattice + affine + flip, HSV shift,      peak renormalisation, clips
      idt rotations / sot directions): ~100 numbers
    ----------------------------------------------------  ------------------------------------------------
    main process: pinned copy (DataLoader's pin thread), host-to-device copy and the augmentation on a
    side CUDA stream one batch ahead, so both overlap the previous training step (`DeviceLoader`).

What the loader ships is uint8 pixels plus ~1 KB of parameters per sample, instead of "fast"'s eight
float32 planes (32 bytes per pixel and side): at res 256 0.85 MB per batch row instead of 4.2 MB. The
bytes that pass through the main process (unpickling, page faults of fresh shared memory, the pin-memory
copy) are what capped the old loader near 550 samples/s however many workers it had (bench suite
"pipeline", bench/README.md).

Randomness: each sample's parameters are a pure function of its 32-bit key from the BatchPlanner
(`PCG64(SeedSequence(key, spawn_key=(5,)))`), so the stream does not depend on the worker count, the
batch composition, the DDP world size or the device; the loader's checkpointed state (the planner's
position) restores it exactly. The pixels computed from those parameters are bit-identical on a given
device and implementation, and differ across devices only by float rounding of the kernels.

How "device" differs from DFL ("dfl" mode, the oracle) — same distributions, not the same stream:
- the warp, affine and flip: DFL's distribution (kernels.warp.warp_params_from_uniforms), sampled once
  through the composed map like "fast" (kernels/warp/batched.py documents the bound against DFL's two
  interpolations); targets and masks reproduce cv2.warpAffine's coordinates as in "fast";
- the cache: as "fast" (uint8 rounding of the face-type conversion; exact when none is needed);
- HSV, rct, lct, mkl, idt, sot: torch ports of DFL's numpy code, bounded against it in
  tests/data/test_device_color.py (engine.data.device_color lists each op's difference); idt/sot draw
  two sets of rotations / directions per sample, one for the network input and one for the target, as
  DFL's two FACE_IMAGE outputs do.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from engine.data import device_color
from engine.data.dataset import _SIDE_KEYS, BatchPlan, SAEHDBatches
from engine.data.sample import OUTPUT_NAMES, SampleOptions
from engine.errors import CheckpointError
from engine.faces.faceset import Faceset
from kernels.warp import WARP_UNIFORMS, WarpBatchParams, warp_batch, warp_params_from_uniforms

__all__ = ["DeviceBatches", "DeviceAugment", "DeviceLoader", "augment_side", "Packer", "unpack", "draw_side",
           "RANDOM_CT"]

log = logging.getLogger("torchsae.data")

RANDOM_CT = ("idt", "sot")  # draw per call: the network input and the target get different transfers (§5.2)
_KEY_DEVICE = 5  # spawn_key of the device pipeline's per-sample stream (engine.data.dataset uses 1..4)


# ---------------------------------------------------------------------------------------------------------
# Per-sample draws (loader process)


def draw_side(keys: Sequence[int], opts: SampleOptions) -> dict[str, torch.Tensor]:
    """The augmentation parameters of one side of a batch, one stream per sample key (CPU tensors).

    Returns nodes (N, 2, 9, 9) float32, rmat (N, 2, 3) float64, flip (N,) bool (kernels.warp.
    WarpBatchParams for the model resolution, DFL's ranges and opts.random_flip); hsv (N, 3) float32
    (dh degrees, ds, dv; DFL: dh uniform in −h..h with h = max(1, int(360·a/2)), ds and dv uniform in
    ±a/2) when opts.random_hsv_power; ct_draws when opts.ct_mode is idt (N, 2, 20, 3, 3) Haar rotations,
    or sot (N, 2, 50, 3) normal directions — index 0 for the network input, 1 for the target.
    """
    n = len(keys)
    u = np.empty((n, WARP_UNIFORMS))
    a = opts.random_hsv_power
    hsv = np.empty((n, 3), dtype=np.float32) if a else None
    ct = opts.ct_mode if opts.ct_mode in RANDOM_CT else None
    if ct == "idt":
        ct_raw = np.empty((n, 2, device_color.IDT_ROTATIONS, 3, 3))
    elif ct == "sot":
        ct_raw = np.empty((n, 2, device_color.SOT_DIRECTIONS, 3))
    for i, key in enumerate(keys):
        g = np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(key), spawn_key=(_KEY_DEVICE,))))
        u[i] = g.random(WARP_UNIFORMS)
        if hsv is not None:
            h = max(1, int(360 * a * 0.5))
            uh = g.random(3)
            hsv[i] = (np.floor(uh[0] * (2 * h + 1)) - h, (uh[1] - 0.5) * a, (uh[2] - 0.5) * a)
        if ct is not None:
            ct_raw[i] = g.standard_normal(ct_raw.shape[1:])
    bp = warp_params_from_uniforms(torch.from_numpy(u), opts.resolution, opts.random_flip,
                                   rotation_range=opts.rotation_range, scale_range=opts.scale_range,
                                   tx_range=opts.tx_range, ty_range=opts.ty_range)
    out = {"nodes": bp.nodes, "rmat": bp.rmat, "flip": bp.flip}
    if hsv is not None:
        out["hsv"] = torch.from_numpy(hsv)
    if ct == "idt":
        out["ct_draws"] = torch.from_numpy(device_color.haar_rotations(ct_raw).astype(np.float32))
    elif ct == "sot":
        out["ct_draws"] = torch.from_numpy(ct_raw.astype(np.float32))
    return out


# ---------------------------------------------------------------------------------------------------------
# The loader-side batch maker


_ALIGN = 64  # byte alignment of every packed array (any dtype view, cache-line aligned copies)


class Packer:
    """One flat uint8 buffer holding every array of a raw batch, with its layout.

    A batch crosses from a loader worker to the training process as ONE shared-memory segment (one
    file descriptor, one page-mapping, one pinned copy, one host-to-device copy) instead of one per array:
    each tensor handed over costs a shared-memory file, a descriptor passed over a socket and a mapping
    in the receiver. In a worker the buffer is allocated in shared memory directly, so handing it over
    copies nothing. `add(key, shape, dtype)` reserves space (call all before `buffer()`), `view(key)`
    returns a writable numpy view into it.
    """

    def __init__(self) -> None:
        self.layout: list[tuple[str, int, str, tuple[int, ...]]] = []
        self.size = 0
        self._buf: torch.Tensor | None = None

    def add(self, key: str, shape: tuple[int, ...], dtype: np.dtype | type) -> None:
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dt.itemsize
        self.layout.append((key, self.size, dt.str, tuple(int(x) for x in shape)))
        self.size += -(-nbytes // _ALIGN) * _ALIGN

    def buffer(self) -> torch.Tensor:
        if self._buf is None:
            t = torch.empty(max(self.size, 1), dtype=torch.uint8)
            self._buf = t.share_memory_() if torch.utils.data.get_worker_info() is not None else t
        return self._buf

    def view(self, key: str) -> np.ndarray:
        buf = self.buffer().numpy()
        for k, off, dt, shape in self.layout:
            if k == key:
                n = int(np.prod(shape)) * np.dtype(dt).itemsize
                return buf[off:off + n].view(dt).reshape(shape)
        raise KeyError(key)


def unpack(buffer: torch.Tensor, layout: Sequence[tuple[str, int, str, Sequence[int]]]) -> dict[str, torch.Tensor]:
    """The arrays of a packed batch as tensors viewing `buffer` (on whatever device it now is)."""
    out = {}
    for key, off, dt, shape in layout:
        dtype = _TORCH_DTYPES[np.dtype(dt)]
        n = int(np.prod(shape)) * np.dtype(dt).itemsize
        out[key] = buffer[off:off + n].view(dtype).view(tuple(shape))
    return out


_TORCH_DTYPES = {np.dtype(np.uint8): torch.uint8, np.dtype(np.int32): torch.int32, np.dtype(np.float32): torch.float32,
                 np.dtype(np.float64): torch.float64, np.dtype(np.bool_): torch.bool}


class DeviceBatches(SAEHDBatches):
    """Map-style dataset keyed by BatchPlan: `batches[plan]` -> the raw batch the device pipeline needs,
    packed: {"packed": uint8 buffer, "layout": [(key, byte offset, numpy dtype, shape), ...], "_step",
    "_bad"} (`unpack` gives the arrays; see `Packer`).

    Arrays per side ("src", "dst"): `{side}_image` (N, R, R, 3) uint8 BGR, `{side}_masks` (N, R, R, 2)
    uint8 (FULL_FACE, EYES_MOUTH), `{side}_ct` (N, R, R, 3) uint8 (src with ct: each sample's dst colour
    reference, resized to R), and the draws of `draw_side` prefixed `{side}_`. Undecodable samples are
    replaced as in "fast" (the next usable index, same key).
    """

    def __init__(self, src: Faceset, dst: Faceset, src_opts: SampleOptions, dst_opts: SampleOptions, *,
                 cache_dir=None, warp_impl: str = "auto"):
        super().__init__(src, dst, src_opts, dst_opts, mode="device", cache_dir=cache_dir, warp_impl=warp_impl)

    def _side_rows(self, side: str, idx: Sequence[int], keys: Sequence[int], ct: Sequence[int] | None,
                   bad: list, pk: Packer) -> tuple:
        """Decode what is missing, reserve this side's arrays in `pk`; returns what `_side_fill` writes."""
        fs, opts = (self.src if side == "src" else self.dst), self.opts[side]
        r, n = opts.resolution, len(idx)
        rows = [self._cached(fs, i, opts, bad) for i in idx]
        ct_rows = [self._cached_ct(j, bad) for j in ct] if (ct is not None and opts.ct_mode) else None
        draws = {f"{side}_{k}": v.numpy() for k, v in draw_side(keys, opts).items()}
        pk.add(f"{side}_image", (n, r, r, 3), np.uint8)
        pk.add(f"{side}_masks", (n, r, r, 2), np.uint8)
        if ct_rows is not None:
            pk.add(f"{side}_ct", (n, r, r, 3), np.uint8)
        for k, v in draws.items():
            pk.add(k, v.shape, v.dtype)
        return side, fs, rows, ct_rows, draws

    def _side_fill(self, pk: Packer, side: str, fs: Faceset, rows: list, ct_rows: list | None, draws: dict) -> None:
        cache = self._caches[self._key(fs)]
        np.take(cache.image, rows, axis=0, out=pk.view(f"{side}_image"))
        np.take(cache.masks, rows, axis=0, out=pk.view(f"{side}_masks"))
        if ct_rows is not None:
            np.take(self._caches[self._key(self.dst)].ct, ct_rows, axis=0, out=pk.view(f"{side}_ct"))
        for k, v in draws.items():
            pk.view(k)[...] = v

    def __getitem__(self, plan: BatchPlan) -> dict:
        bad: list = []
        pk = Packer()
        sides = [self._side_rows("src", plan.src, plan.src_keys, plan.ct, bad, pk),
                 self._side_rows("dst", plan.dst, plan.dst_keys, None, bad, pk)]
        for s in sides:
            self._side_fill(pk, *s)
        return {"packed": pk.buffer(), "layout": pk.layout, "_step": plan.step, "_bad": bad}


# ---------------------------------------------------------------------------------------------------------
# The device side


@contextlib.contextmanager
def _cpu_threads_for(raw: dict[str, torch.Tensor]) -> Iterator[None]:
    """On a CPU device, run small batches' augmentation on one intra-op thread.

    Its ops are many small elementwise passes (a 128² batch of 4: ~64K pixels each); split over OpenMP
    threads each one pays a fork-join, and on a machine where another process holds a core, one
    descheduled thread stalls every op (a 128² batch of 4 takes a few ms on one thread, and several
    times longer on two threads when a core is shared). Batches above ~1M pixels per side keep torch's
    threads."""
    image = raw.get("src_image")
    if image is None or image.device.type != "cpu":
        yield
        return
    small = image[..., 0].numel() <= 1 << 20
    before = torch.get_num_threads()
    if not small or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class DeviceAugment:
    """Raw batch (DeviceBatches' tensors, on any device) -> the eight SAEHD tensors on that device.

    src_opts / dst_opts: the two generators' SampleOptions; warp_impl: kernels.warp implementation
    ("auto": Triton on CUDA, the C kernel on CPU). Every op is batched over the side; nothing here
    draws random numbers.
    """

    def __init__(self, src_opts: SampleOptions, dst_opts: SampleOptions, *, warp_impl: str = "auto"):
        self.opts = {"src": src_opts, "dst": dst_opts}
        self.warp_impl = warp_impl

    def __call__(self, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        with _cpu_threads_for(raw):
            for side in ("src", "dst"):
                made = self.side(raw, side)
                out.update({k: made[name] for k, name in zip(_SIDE_KEYS[side], OUTPUT_NAMES)})
        return out

    def side(self, raw: dict[str, torch.Tensor], side: str) -> dict[str, torch.Tensor]:
        """One side of a raw batch: {"warped", "target", "mask", "mask_em"} float32 NCHW."""
        opts = self.opts[side]
        image = raw[f"{side}_image"]
        dev = image.device
        img = image.permute(0, 3, 1, 2).float().div_(255.0).contiguous()  # (N, 3, R, R)
        masks = raw[f"{side}_masks"].permute(0, 3, 1, 2).float().div_(255.0).contiguous()  # (N, 2, R, R)
        w, rw = (64, opts.resolution) if opts.resolution < 64 else (opts.resolution, None)
        bp = WarpBatchParams(w, rw, raw[f"{side}_nodes"].to(dev), raw[f"{side}_rmat"].to(dev),
                             raw[f"{side}_flip"].to(dev))
        ref = raw.get(f"{side}_ct")
        if ref is not None:
            ref = ref.permute(0, 3, 1, 2).float().div_(255.0)
        draws, hsv = raw.get(f"{side}_ct_draws"), raw.get(f"{side}_hsv")
        return augment_side(img, masks, bp, opts, ref=ref, ct_draws=None if draws is None else draws.to(dev),
                            hsv=None if hsv is None else hsv.to(dev), impl=self.warp_impl)


def augment_side(img: torch.Tensor, masks: torch.Tensor, bp: WarpBatchParams, opts: SampleOptions, *,
                 ref: torch.Tensor | None = None, ct_draws: torch.Tensor | None = None,
                 hsv: torch.Tensor | None = None, impl: str = "auto") -> dict[str, torch.Tensor]:
    """SampleProcessor's per-batch work for one side (§5.4), in DFL's order: colour transfer, HSV (network
    input only), warp + affine + flip, EYES_MOUTH renormalisation, clips.

    img (N, 3, R, R) float in [0, 1] BGR at the model's geometry; masks (N, 2, R, R) (FULL_FACE,
    EYES_MOUTH); bp the warp parameters; ref (N, 3, R, R) the ct references (when opts.ct_mode);
    ct_draws (N, 2, ...) idt rotations / sot directions for the network input and the target; hsv (N, 3)
    the HSV shifts. Returns {"warped", "target", "mask", "mask_em"} float32 NCHW on img's device.
    """
    inp = tgt = img
    if ref is not None and opts.ct_mode:
        if opts.ct_mode in RANDOM_CT:
            inp = device_color.color_transfer(opts.ct_mode, img, ref, ct_draws[:, 0])
            tgt = device_color.color_transfer(opts.ct_mode, img, ref, ct_draws[:, 1])
        else:
            inp = tgt = device_color.color_transfer(opts.ct_mode, img, ref)
    if hsv is not None:
        inp = device_color.hsv_shift(inp, hsv)
    target = warp_batch(tgt, bp, False, True, True, True, "cubic", impl=impl)
    if opts.random_warp or inp is not tgt:
        warped = warp_batch(inp, bp, opts.random_warp, True, True, True, "cubic", impl=impl)
    else:  # no grid warp, no HSV, no random ct: the network input is the target (pretrain)
        warped = target.clone()
    m = warp_batch(masks, bp, False, True, True, False, "linear", impl=impl)
    mask, mask_em = m[:, 0:1], m[:, 1:2]
    peak = mask_em.amax(dim=(1, 2, 3), keepdim=True)
    mask_em = mask_em / torch.where(peak != 0, peak, torch.ones_like(peak))  # §5.4 step 4; all-zero stays 0
    return {"warped": warped.clamp_(0, 1).contiguous(), "target": target.clamp_(0, 1).contiguous(),
            "mask": mask.contiguous(), "mask_em": mask_em.contiguous()}


class DeviceLoader:
    """A FaceLoader of DeviceBatches made into an iterator of augmented batches on `device`.

    On CUDA the next batch is copied (from pinned memory) and augmented on a side stream before the
    current one is returned, so the copy and the augmentation overlap the training step that consumes
    the current batch; the consumer's stream waits on an event and the tensors are recorded on it (the
    caching allocator then keeps them alive). Elsewhere batches are made on demand. `state_dict()`
    describes the last batch returned (the one in flight is not counted), so resume is exact.
    ahead: keep one batch in flight (default: on CUDA only; on CPU it only exercises the bookkeeping).
    """

    def __init__(self, loader, augment: DeviceAugment, device: torch.device | str, *, ahead: bool | None = None):
        self.loader = loader
        self.augment = augment
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.ahead = self.cuda if ahead is None else bool(ahead)
        self._stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._pending: tuple | None = None
        self._state = loader.state_dict()
        log.info("data: device pipeline on %s (%s)", self.device,
                 "side-stream copy and augmentation one batch ahead" if self.cuda else "augmentation in this process")

    @property
    def batches(self) -> DeviceBatches:
        return self.loader.batches

    def __getattr__(self, name: str) -> Any:  # the FaceLoader's settings (workers, pin_memory, ...) read through
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def _fetch(self) -> tuple:
        raw = next(self.loader)
        state = self.loader.state_dict()
        if not self.cuda:
            moved = unpack(raw["packed"].to(self.device), raw["layout"])
            return self.augment(moved), None, None, state
        with torch.cuda.stream(self._stream):
            moved = unpack(raw["packed"].to(self.device, non_blocking=True), raw["layout"])  # one copy
            out = self.augment(moved)
            done = torch.cuda.Event()
            done.record(self._stream)
        return out, done, raw, state  # raw (pinned host memory) stays referenced until the copy is consumed

    def __iter__(self) -> DeviceLoader:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._pending is None:
            self._pending = self._fetch()
        out, done, _raw, state = self._pending
        self._pending = None
        if done is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(done)
            for t in out.values():
                t.record_stream(current)
        if self.ahead:
            self._pending = self._fetch()  # the next batch's copy + augmentation overlap this step
        self._state = state
        return out

    def describe(self) -> dict:
        return {**self.loader.describe(), "device": str(self.device)}

    def state_dict(self) -> dict:
        return self._state

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise CheckpointError(f"loader state: expected a dict, got {state!r:.200}")
        self._pending = None
        self.loader.load_state_dict(state)
        self._state = self.loader.state_dict()

    def close(self) -> None:
        self._pending = None
        self.loader.close()

    def __enter__(self) -> DeviceLoader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
