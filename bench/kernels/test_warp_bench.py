"""SAEHD's random warp (docs/dfl.md §5.2–5.4) at res 256, batch 8: samples/s of the geometric augmentation.

One sample = what SAEHD's SampleProcessor produces geometrically per face: the network input
(grid warp + affine + flip, cubic, replicate border), the target (affine + flip, cubic, replicate) and
a mask (affine + flip, linear, zero border), 3 + 3 + 1 channels.

Figures (benchmark.group) and providers (extra_info["provider"]):
  "warp res256 b8"            reference  DFL's per-sample path as SampleProcessor runs it: per output,
                                         fresh RandomStates, gen_warp_params, warp_by_params (numpy/cv2)
                              fast       random_warp_params on the device + three warp_batch calls
  "warp res256 b8 dfl-params" reference  same as above
                              fast       DFL-compatible draws (gen_warp_params once per sample, numpy)
                                         + WarpBatchParams.from_dfl + three warp_batch calls
  "warp res256 b8 t1"         both providers as in the first figure with one thread each
                                         (torch.set_num_threads(1), cv2.setNumThreads(1)): the per-core
                                         figure, much less sensitive to other processes on a shared box
Colour transfer, HSV shift and clipping are not part of either side. On CUDA the fast provider runs
the Triton sampler (impl auto); the reference is numpy/cv2 either way.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from kernels.warp import SAEHD_SCALE_RANGE, WarpBatchParams, gen_warp_params, random_warp_params, warp_batch, warp_by_params

RES, BATCH = 256, 8
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _data():
    rng = np.random.RandomState(0)
    imgs = rng.rand(BATCH, RES, RES, 3).astype(np.float32)
    masks = (rng.rand(BATCH, RES, RES, 1) > 0.5).astype(np.float32)
    return rng, imgs, masks


def _reference(rng, imgs, masks):
    def step():
        out = []
        for i in range(BATCH):
            seed = rng.randint(0x80000000)
            sample = []
            for kind in ("input", "target", "mask"):  # SampleProcessor draws the params per output
                p = gen_warp_params(RES, True, scale_range=SAEHD_SCALE_RANGE, rnd_state=np.random.RandomState(seed),
                                    warp_rnd_state=np.random.RandomState(seed))
                if kind == "input":
                    sample.append(warp_by_params(p, imgs[i], True, True, True, True, cv2.INTER_CUBIC))
                elif kind == "target":
                    sample.append(warp_by_params(p, imgs[i], False, True, True, True, cv2.INTER_CUBIC))
                else:
                    sample.append(warp_by_params(p, masks[i], False, True, True, False, cv2.INTER_LINEAR))
            out.append(sample)
        return out

    return step


def _fast(imgs, masks, dfl_params: bool, rng):
    x = torch.from_numpy(imgs.transpose(0, 3, 1, 2).copy()).to(DEVICE)
    m = torch.from_numpy(masks.transpose(0, 3, 1, 2).copy()).to(DEVICE)
    gen = torch.Generator(device=DEVICE).manual_seed(0)

    def step():
        if dfl_params:
            plist = []
            for _ in range(BATCH):
                seed = rng.randint(0x80000000)
                plist.append(gen_warp_params(RES, True, scale_range=SAEHD_SCALE_RANGE,
                                             rnd_state=np.random.RandomState(seed),
                                             warp_rnd_state=np.random.RandomState(seed)))
            bp = WarpBatchParams.from_dfl(plist, device=DEVICE)
        else:
            bp = random_warp_params(BATCH, RES, True, scale_range=SAEHD_SCALE_RANGE, generator=gen, device=DEVICE)
        a = warp_batch(x, bp, True, True, True, True, "cubic")
        b = warp_batch(x, bp, False, True, True, True, "cubic")
        c = warp_batch(m, bp, False, True, True, False, "linear")
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return a, b, c

    return step


@pytest.fixture
def one_thread(request):
    """torch and OpenCV limited to one thread for the duration of a test (restored afterwards)."""
    t, c = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    yield
    torch.set_num_threads(t)
    cv2.setNumThreads(c)


@pytest.mark.parametrize("provider", ["reference", "fast"])
@pytest.mark.parametrize("figure", ["warp res256 b8", "warp res256 b8 dfl-params", "warp res256 b8 t1"])
def test_warp_samples(benchmark, tag, request, figure, provider):
    if figure.endswith("t1"):
        request.getfixturevalue("one_thread")
    tag(figure, provider, items=BATCH, device=DEVICE if provider == "fast" else "cpu",
        threads=torch.get_num_threads(), cv2_threads=cv2.getNumThreads())
    rng, imgs, masks = _data()
    step = _reference(rng, imgs, masks) if provider == "reference" else _fast(imgs, masks, "dfl-params" in figure, rng)
    out = benchmark(step)
    assert len(out) == (BATCH if provider == "reference" else 3)
