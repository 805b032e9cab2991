"""kernels/dssim/reference.py against DFL's recorded nn.dssim (docs/dfl.md §4.1, §3.4) and math identities."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.dssim import reference as R

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "dssim"
# the res-128 golden (1.7 MB) is read from the shared golden folder beside the checkout (CI has it)
SHARED = Path(os.environ.get("TORCHSAE_SHARED_GOLDEN") or Path(__file__).resolve().parents[3] / "shared" / "golden") / "dssim"
FILES = sorted(GOLDEN.glob("dssim_res*_f*.npz")) + sorted(SHARED.glob("dssim_res128_*.npz"))


def _golden(stem: str) -> Path:
    for d in (GOLDEN, SHARED):
        if (d / f"{stem}.npz").is_file():
            return d / f"{stem}.npz"
    pytest.skip(f"{stem}.npz: not in tests/golden/dssim and no shared golden folder (set TORCHSAE_SHARED_GOLDEN)")

# Why these tolerances: tests/golden/dssim/README.md (TF's own float32 rounding, measured).
TOL = {"dssim": 5e-6, "ssim_map": 3e-4, "grad": 1e-6, "kernel": 1e-8, "saehd": 5e-5}


def _load(path: Path):
    d = dict(np.load(path))
    meta = json.loads(path.with_suffix(".json").read_text())
    nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()  # noqa: E731 - golden is NHWC
    return d, meta, nchw(d["img1"]), nchw(d["img2"])


def test_golden_files_present():
    # The committed subset covers every window DFL uses (odd and even); the shared folder, when it is beside
    # the checkout (CI), adds the res-128 case.
    local = sorted(GOLDEN.glob("dssim_res*_f*.npz"))
    assert len(local) == 6, local
    assert {int(json.loads(f.with_suffix(".json").read_text())["filter_size"]) for f in local} == {1, 2, 3, 4, 5, 11}
    if SHARED.is_dir():
        assert [f.stem for f in FILES if f.parent == SHARED] == ["dssim_res128_f11"], FILES


@pytest.mark.parity
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_matches_dfl_golden(path):
    d, meta, x, y = _load(path)
    fs = int(meta["filter_size"])
    x.requires_grad_(True)
    y.requires_grad_(True)
    out = R.dssim(x, y, fs)
    out.sum().backward()  # DFL recorded d(sum dssim)/d(img)
    to_nhwc = lambda t: t.detach().permute(0, 2, 3, 1)  # noqa: E731

    def close(name, got, want, tol):
        err = float((got.detach().double() - torch.from_numpy(want).double()).abs().max())
        assert err <= tol, f"{path.stem} {name}: max |err| {err:.3g} > {tol:g}"

    close("dssim", out, d["dssim"], TOL["dssim"])
    close("ssim_map", to_nhwc(R.ssim_map(x, y, fs)), d["ssim_map"], TOL["ssim_map"])
    close("kernel", R.gaussian_window(fs), d["kernel"], TOL["kernel"])
    close("grad_img1", to_nhwc(x.grad), d["grad_img1"], TOL["grad"])
    close("grad_img2", to_nhwc(y.grad), d["grad_img2"], TOL["grad"])
    close("saehd_term_10x_mean", 10 * out.mean(dim=1), d["saehd_term_10x_mean"], TOL["saehd"])
    self_d = R.dssim(x.detach(), x.detach(), fs)
    assert torch.equal(self_d, torch.from_numpy(d["dssim_self"])), (self_d, d["dssim_self"])
    # The formula, evaluated in float64, lies within TF's own float32 rounding of the recorded values...
    exact = R.dssim(x.detach().double(), y.detach().double(), fs)
    close("dssim (float64)", exact, d["dssim"], 2.5e-6)
    # ...and our float32 result is closer to it than 1e-6 (more accurate than TF's float32 reduction).
    assert float((out.detach().double() - exact).abs().max()) < 1e-6


@pytest.mark.parity
@pytest.mark.parametrize("stem,resolution", [("dssim_res64_f5", 64), ("dssim_res128_f11", 128)])
def test_saehd_term_matches_dfl(stem, resolution):
    # These two files use the SAEHD window for their resolution: int(64/11.6) = 5, int(128/11.6) = 11.
    d, _, x, y = _load(_golden(stem))
    got = R.saehd_dssim(pred=y, target=x, resolution=resolution)  # DFL: dssim(img1=target, img2=pred)
    want = torch.from_numpy(d["saehd_term_10x_mean"])
    assert got.shape == (x.shape[0],)
    assert float((got - want).abs().max()) <= TOL["saehd"]


@pytest.mark.parametrize("r,expected", [
    (64, ((10.0, 5),)), (128, ((10.0, 11),)), (192, ((10.0, 16),)), (224, ((10.0, 19),)),
    (256, ((5.0, 22), (5.0, 11))), (320, ((5.0, 27), (5.0, 13))), (384, ((5.0, 33), (5.0, 16))),
    (512, ((5.0, 44), (5.0, 22))),
])
def test_saehd_windows_table(r, expected):
    assert R.saehd_windows(r) == expected  # docs/dfl.md §3.4 "Common values by resolution"


def test_saehd_two_window_sum():
    g = torch.Generator().manual_seed(3)
    t = torch.rand(1, 2, 256, 256, generator=g)
    p = torch.rand(1, 2, 256, 256, generator=g)
    want = 5 * R.dssim(t, p, 22).mean(1) + 5 * R.dssim(t, p, 11).mean(1)
    assert torch.equal(R.saehd_dssim(p, t, 256), want)


@pytest.mark.parametrize("fs", [1, 2, 3, 11, 16, 22, 44])
def test_window_is_separable_softmax(fs):
    k = R.gaussian_window(fs, dtype=torch.float64)
    g = R.gaussian_1d(fs, dtype=torch.float64)
    assert k.shape == (fs, fs)
    assert abs(float(k.sum()) - 1.0) < 1e-12
    assert torch.allclose(k, torch.outer(g, g), atol=1e-15, rtol=0)
    assert torch.equal(g, g.flip(0))  # symmetric: the transposed filter is the filter itself
    # hand value: fs = 2 gives four equal weights (both offsets are ±0.5)
    if fs == 2:
        assert torch.allclose(k, torch.full((2, 2), 0.25, dtype=torch.float64))


def test_hand_computed_constant_images():
    # Constant images a, b: μ = a, b; variances 0 → cs = c2/c2 = 1, lum = (2ab + c1)/(a² + b² + c1).
    # In float64 the formula is checked exactly; in float32 DFL's E[x²] − E[x]² leaves a variance of
    # ~ulp(a²) ≈ 3e-8 against c2 = 9e-4, so cs is off by up to ~1e-4 relative (how large depends on the
    # conv backend's summation order): the float32 bound is that, not float64's.
    a, b = 0.3, 0.7
    c1 = 1e-4
    lum = (2 * a * b + c1) / (a * a + b * b + c1)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-4)):
        x = torch.full((1, 1, 8, 8), a, dtype=dtype)
        y = torch.full((1, 1, 8, 8), b, dtype=dtype)
        assert abs(float(R.dssim(x, y, 3)) - (1 - lum) / 2) < tol, dtype


@pytest.mark.parametrize("fast_mode", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["fast", "full"])
@pytest.mark.parametrize("fs", [3, 4])
def test_gradcheck_float64(fs, fast_mode):
    g = torch.Generator().manual_seed(fs)
    x = torch.rand(1, 2, 5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.rand(1, 2, 5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: R.dssim(a, b, fs), (x, y), fast_mode=fast_mode)


def test_float64_in_float64_out_and_bf16_computes_in_float32():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 16, 16, generator=g)
    y = torch.rand(1, 3, 16, 16, generator=g)
    assert R.dssim(x.double(), y.double(), 5).dtype == torch.float64
    xb, yb = x.bfloat16(), y.bfloat16()
    got = R.dssim(xb, yb, 5)
    assert got.dtype == torch.float32
    assert torch.equal(got, R.dssim(xb.float(), yb.float(), 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = R.dssim(x, y, 5)
    assert under.dtype == torch.float32 and torch.equal(under, R.dssim(x, y, 5))


def test_errors_name_the_problem():
    x = torch.rand(1, 1, 8, 10)
    with pytest.raises(ValueError, match=r"filter_size 9 is larger than the image \(8x10\)"):
        R.dssim(x, x, 9)
    with pytest.raises(ValueError, match="same shape"):
        R.dssim(x, x[..., :9], 3)
    with pytest.raises(ValueError, match="resolution must be a positive int"):
        R.saehd_windows(0)


_img = st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(4, 10), st.integers(4, 10), st.integers(1, 4),
                 st.integers(0, 2**31 - 1))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(_img)
def test_properties(case):
    n, c, h, w, fs, seed = case
    fs = min(fs, h, w)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, h, w, generator=g)
    y = torch.rand(n, c, h, w, generator=g)
    d = R.dssim(x, y, fs)
    assert d.shape == (n, c)
    assert torch.all(R.dssim(x, x, fs).abs() <= 1e-7)  # identical images: lum = cs = 1
    assert torch.equal(d, R.dssim(y, x, fs))  # symmetric, bit for bit
    assert torch.all(d >= -1e-6) and torch.all(d <= 1 + 1e-6)  # |ssim| <= 1 (Cauchy-Schwarz)
