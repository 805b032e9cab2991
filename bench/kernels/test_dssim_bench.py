"""DSSIM fwd+bwd (SAEHD's structural term, docs/dfl.md §3.4) at the resolutions SAEHD trains at, batch 8, 3 channels.

Figures: res 128 (window 11), 256 (22 + 11), 384 (33 + 16). Providers:
  reference       kernels.dssim impl="reference" (DFL's 2-D window as a depthwise conv2d, autograd)
  fast            kernels.dssim impl="fast" (C kernel on CPU, Triton on CUDA)
  pytorch-msssim  pytorch_msssim.ssim, same windows, only if installed and the window is odd (it refuses
  kornia          kornia.losses.ssim_loss (padding="valid"), same conditions     even windows, DFL's 22/16)
Third-party SSIMs differ from DFL in their window construction; they are here for speed only.
fwd+bwd = loss.sum().backward() w.r.t. the prediction, the way the trainer calls it.
"""

from __future__ import annotations

import importlib

import pytest
import torch

import kernels.dssim as K

BATCH, CH = 8, 3
CASES = [128, 256, 384]
PROVIDERS = ["reference", "fast", "pytorch-msssim", "kornia"]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _third_party(provider: str, windows):
    """Per-sample Σ weight·(1 − ssim)/2 from a third-party package, or pytest.skip with the reason."""
    module = {"pytorch-msssim": "pytorch_msssim", "kornia": "kornia"}[provider]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        pytest.skip(f"{provider} is not installed (optional comparison; not a dependency)")
    even = [fs for _, fs in windows if fs % 2 == 0]
    if even:
        pytest.skip(f"{provider} accepts only odd windows; SAEHD uses {even}")
    if provider == "pytorch-msssim":
        def fn(pred, target):
            return sum(w * (1 - mod.ssim(target, pred, data_range=1.0, size_average=False, win_size=fs,
                                         win_sigma=1.5)) / 2 for w, fs in windows)
    else:
        def fn(pred, target):
            return sum(w * mod.losses.ssim_loss(target, pred, window_size=fs, max_val=1.0, reduction="none",
                                                padding="valid").mean(dim=(1, 2, 3)) for w, fs in windows)
    return fn


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("res", CASES)
def test_dssim_fwd_bwd(benchmark, tag, res, provider):
    windows = K.saehd_windows(res)
    label = "+".join(str(fs) for _, fs in windows)
    tag(f"dssim fwd+bwd res{res} w{label} b{BATCH}", provider, items=BATCH, device=DEVICE)
    if provider in ("reference", "fast"):
        def loss(pred, target):
            return K.saehd_dssim(pred, target, res, impl=provider)
    else:
        loss = _third_party(provider, windows)
    g = torch.Generator().manual_seed(res)
    target = torch.rand(BATCH, CH, res, res, generator=g).to(DEVICE)
    pred = (0.7 * target.cpu() + 0.3 * torch.rand(BATCH, CH, res, res, generator=g)).to(DEVICE).requires_grad_(True)

    def step():
        pred.grad = None
        loss(pred, target).sum().backward()
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    benchmark(step)
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
