"""DFL's random warp (docs/dfl.md §5.2–5.4, quirks §12.6–12.8): the numpy reference and the batched paths.

Reference (numpy + OpenCV, DFL's signatures, bit-exact against the goldens):

    gen_warp_params(w, flip, rotation_range=(-10, 10), scale_range=(-0.5, 0.5), tx_range=(-0.05, 0.05),
                    ty_range=(-0.05, 0.05), rnd_state=None, warp_rnd_state=None) -> dict
        SAEHD passes scale_range=(-0.15, 0.15) (SAEHD_SCALE_RANGE); everything else at DFL's defaults.
    warp_by_params(params, img (H, W[, C]) float32, can_warp, can_transform, can_flip, border_replicate,
                   cv2_inter=cv2.INTER_CUBIC) -> (H, W, C)

Batched (torch, CPU or CUDA; one sampling per pixel instead of DFL's two):

    warp_batch(images (N, C, S, S), params, can_warp, can_transform, can_flip, border_replicate,
               interp="cubic" | "linear", impl="auto") -> (N, C, S, S)
        params: a list of N DFL dicts (from gen_warp_params) or a WarpBatchParams (from
        WarpBatchParams.from_dfl or random_warp_params); S = params' rw when set, else w.
        SAEHD: network input  warp_batch(img, p, True,  True, True, True,  "cubic")
               target image   warp_batch(img, p, False, True, True, True,  "cubic")
               masks          warp_batch(msk, p, False, True, True, False, "linear")
        impl: auto | reference | batched | cpu | triton | fast (kernels/warp/op.py chooses; kernels/dispatch.py
        has the rules). auto = cpu (the C kernel) on the CPU, triton on CUDA, else batched.
    random_warp_params(n, w, flip, *, rotation_range, scale_range, tx_range, ty_range, generator,
                       device) -> WarpBatchParams
        DFL's distribution drawn on the device from a torch.Generator (not DFL's numpy stream).
    warp_params_from_uniforms(u (N, WARP_UNIFORMS), w, flip, *, ranges) -> WarpBatchParams
        the same distribution from given uniforms (per-sample streams: engine.data.device).
    choose(device, impl) -> the implementation warp_batch would run

>>> import numpy as np, torch
>>> from kernels.warp import SAEHD_SCALE_RANGE, gen_warp_params, random_warp_params, warp_batch
>>> img = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
>>> bp = random_warp_params(2, 64, True, scale_range=SAEHD_SCALE_RANGE, generator=torch.Generator().manual_seed(1))
>>> warp_batch(img, bp, True, True, True, True, "cubic").shape          # network input: grid warp + affine + flip
torch.Size([2, 3, 64, 64])
>>> p = [gen_warp_params(64, False, rnd_state=np.random.RandomState(s), warp_rnd_state=np.random.RandomState(s))
...      for s in (3, 4)]                                                 # DFL's own draws, two samples
>>> ref = warp_batch(img, p, False, True, False, True, "cubic", impl="reference")  # DFL's cv2.warpAffine
>>> err = (warp_batch(img, p, False, True, False, True, "cubic") - ref).abs().max().item()  # no grid
>>> import cv2; err < (1e-4 if int(cv2.__version__.split(".")[0]) < 5 else 0.05)
True

(exact under OpenCV 4, which DFL ran; OpenCV 5 dropped warpAffine's 1/32-pixel coordinates: ~0.03 there)

How the one-pass paths differ from DFL's two-pass result is documented in kernels/warp/batched.py: exact
(float rounding) for transform-only/flip-only calls (targets, masks, §12.8); interpolation error for the
composed grid warp. Files (the same roles in every kernels/<op>/, see kernels/README.md): reference.py,
batched.py, cpu.py + warp_cpu.c, triton.py, op.py.
"""

from .batched import WARP_UNIFORMS, WarpBatchParams, random_warp_params, warp_params_from_uniforms
from .op import choose, warp_batch
from .reference import DEFAULT_RANGES, SAEHD_SCALE_RANGE, gen_warp_params, random_normal, warp_by_params

__all__ = [
    "gen_warp_params",
    "warp_by_params",
    "random_normal",
    "warp_batch",
    "choose",
    "random_warp_params",
    "warp_params_from_uniforms",
    "WARP_UNIFORMS",
    "WarpBatchParams",
    "DEFAULT_RANGES",
    "SAEHD_SCALE_RANGE",
]
