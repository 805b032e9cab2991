"""DSSIM's fused paths (cpu: the C kernel; triton) against the reference, forward and backward; its dispatch.

Liger-Kernel pattern: curated shapes (B=1, odd and prime sizes, H != W, window = image, window 1, DFL's
11/16/22/44 and SAEHD's window pairs), the same upstream gradient for both implementations, one
(dtype -> atol, rtol) table, and a comparator that prints the mismatch count and first indices.
Triton kernels run under TRITON_INTERPRET=1 on tiny shapes here; full-size Triton checks need CUDA.
"""

from __future__ import annotations

import logging

import pytest
import torch

import kernels.dispatch as dispatch
import kernels.dssim as K
from kernels import cbuild
from kernels.dispatch import KernelChoiceError, KernelUnavailableError
from kernels.dssim import cpu, op, reference as R

HAS_CUDA = torch.cuda.is_available()

# dtype -> {"out": (atol, rtol), "grad": (atol, rtol)}. Every implementation computes in float32, so the
# output is held to float32 rounding for every input dtype; gradients come back in the input dtype.
# Gradient atol is relative to max |reference gradient| (gradients scale as 1/(H'·W')): both float32
# implementations sit up to ~1e-5 of that from the float64 value, and differ from each other by up to ~6e-5,
# where the contrast term is ill-conditioned (window 1 or 2: the gradient is a sum of O(1/c2) terms that
# cancel, c2 = 9e-4). test_*_matches_reference also checks accuracy against the float64 reference.
TOL = {
    torch.float32: {"out": (2e-6, 1e-5), "grad": (1e-4, 1e-4)},
    torch.bfloat16: {"out": (2e-6, 1e-5), "grad": (1e-4, 1.6e-2)},
    torch.float16: {"out": (2e-6, 1e-5), "grad": (1e-4, 2e-3)},
}

# (N, C, H, W, windows): windows > 1 entry go through the fused multi-window op (weights 5 each, as SAEHD).
SHAPES = [
    (1, 1, 11, 11, (11,)),     # window equal to the image: a single SSIM value per plane
    (2, 3, 17, 23, (5,)),      # prime sizes, H != W
    (1, 3, 31, 29, (1,)),      # window 1: the filter is the identity
    (3, 2, 37, 41, (16,)),     # even window (R=192)
    (1, 2, 13, 70, (2,)),      # even, wide
    (1, 1, 80, 5, (4,)),       # tall and narrower than the vector block
    (2, 3, 64, 48, (22, 11)),  # SAEHD's R=256 pair on a small image
    (1, 2, 61, 53, (44, 22)),  # SAEHD's R=512 pair
    (1, 3, 128, 128, (11,)),   # SAEHD R=128
]


def assert_verbose_close(got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float, name: str,
                         max_print: int = 5) -> None:
    """torch.isclose elementwise; on failure report how many elements differ and where the first ones are."""
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    g, w = got.detach().double().cpu(), want.detach().double().cpu()
    bad = ~torch.isclose(g, w, atol=atol, rtol=rtol)
    if bad.any():
        idx = bad.nonzero()[:max_print].tolist()
        diff = (g - w).abs()
        lines = [f"{name}: {int(bad.sum())}/{bad.numel()} elements differ (atol={atol:g}, rtol={rtol:g}); "
                 f"max |diff| {float(diff.max()):.3g}"]
        lines += [f"  at {tuple(i)}: got {float(g[tuple(i)]):.9g}, want {float(w[tuple(i)]):.9g}" for i in idx]
        raise AssertionError("\n".join(lines))


def test_comparator_reports_mismatches():
    a = torch.zeros(2, 3)
    b = a.clone()
    b[1, 2] = 1.0
    with pytest.raises(AssertionError, match=r"1/6 elements differ.*\n  at \(1, 2\): got 0, want 1"):
        assert_verbose_close(a, b, 1e-6, 0.0, "t")


def _pair(shape, dtype, seed, grad_target=True):
    n, c, h, w, _ = shape
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, c, h, w, generator=g)
    # a prediction correlated with the target, like a training batch (and like DFL's golden inputs)
    p = (0.7 * t + 0.3 * torch.rand(n, c, h, w, generator=g)).clamp(0, 1)
    return t.to(dtype).requires_grad_(grad_target), p.to(dtype).requires_grad_(True)


def _run(fn, t, p, upstream):
    out = fn(t, p)
    inputs = [x for x in (t, p) if x.requires_grad]
    grads = torch.autograd.grad(out, inputs, upstream)
    return out, grads


def _weighted(impl_fn, windows):
    """out[n, c] = Σ_w 5·dssim_w(t, p): the fused op of the cpu path, the reference summed per window."""
    return lambda t, p: sum(5.0 * impl_fn(t, p, fs) for fs in windows) if len(windows) > 1 else impl_fn(t, p, windows[0])


def _check(shape, dtype, fast_fn, seed=0, grad_target=True, vs_float64=False):
    windows = shape[4]
    t, p = _pair(shape, dtype, seed, grad_target)
    upstream = torch.randn(shape[:2], generator=torch.Generator().manual_seed(seed + 1))
    ref = _weighted(lambda a, b, fs: R.dssim(a, b, fs), windows)
    ref_out, ref_grads = _run(ref, t, p, upstream)
    out, grads = _run(fast_fn, t, p, upstream)
    tol = TOL[dtype]
    assert out.dtype == torch.float32
    assert_verbose_close(out, ref_out, *tol["out"], name=f"{shape} {dtype} out")
    names = ("grad target", "grad pred") if grad_target else ("grad pred",)
    for name, g, rg in zip(names, grads, ref_grads):
        assert g.dtype == dtype
        atol, rtol = tol["grad"]
        assert_verbose_close(g, rg, atol * float(rg.abs().max()), rtol, name=f"{shape} {dtype} {name}")
    if vs_float64:
        # At least as accurate as the float32 reference, measured against the float64 reference.
        t64, p64 = (x.detach().double().requires_grad_(x.requires_grad) for x in (t, p))
        out64, grads64 = _run(ref, t64, p64, upstream.double())
        err = lambda a, b: float((a.detach().double() - b.detach()).abs().max())  # noqa: E731
        assert err(out, out64) <= 2 * err(ref_out, out64) + 1e-7
        for name, g, rg, g64 in zip(names, grads, ref_grads, grads64):
            assert err(g, g64) <= 2 * err(rg, g64) + 1e-7 * float(g64.abs().max()), name


def _cpu_path(windows):
    if len(windows) == 1:
        return lambda t, p: K.dssim(t, p, windows[0], impl="cpu")
    return lambda t, p: op.dssim_cpu(t.float(), p.float(), list(windows), [5.0] * len(windows), 1.0,
                                      t.requires_grad, p.requires_grad)[0]


# ----------------------------------------------------------------------------------------------- CPU
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:4])) + "-w" + "+".join(map(str, s[4])))
def test_cpu_matches_reference(shape):
    _check(shape, torch.float32, _cpu_path(shape[4]), vs_float64=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[6]], ids=["17x23-w5", "64x48-w22+11"])
def test_cpu_half_inputs_accumulate_in_fp32(shape, dtype):
    _check(shape, dtype, _cpu_path(shape[4]))


def test_cpu_pred_only_and_no_grad():
    shape = SHAPES[1]
    _check(shape, torch.float32, _cpu_path(shape[4]), seed=5, grad_target=False)
    t, p = _pair(shape, torch.float32, 5)
    with torch.no_grad():
        got = K.dssim(t, p, 5, impl="cpu")
    assert not got.requires_grad
    assert_verbose_close(got, R.dssim(t.detach(), p.detach(), 5), *TOL[torch.float32]["out"], name="no_grad")


@pytest.mark.parametrize("resolution", [64, 256])
def test_saehd_dssim_cpu_matches_reference(resolution):
    g = torch.Generator().manual_seed(resolution)
    t = torch.rand(2, 2 if resolution < 256 else 1, resolution, resolution, generator=g)
    p = (0.6 * t + 0.4 * torch.rand(t.shape, generator=g)).requires_grad_(True)
    up = torch.tensor([1.0, -2.0])
    ref = R.saehd_dssim(p, t, resolution)
    (rg,) = torch.autograd.grad(ref, p, up)
    got = K.saehd_dssim(p, t, resolution, impl="cpu")
    (gg,) = torch.autograd.grad(got, p, up)
    assert got.shape == (2,)
    assert_verbose_close(got, ref, 2e-5, 1e-5, "saehd out")  # 10·dssim: ten times the dssim tolerance
    assert_verbose_close(gg, rg, 5e-5 * float(rg.abs().max()), 1e-4, "saehd grad")


def test_cpu_under_autocast_is_float32():
    t, p = _pair(SHAPES[1], torch.float32, 2)
    want = K.dssim(t, p, 5, impl="cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = K.dssim(t, p, 5, impl="cpu")
    assert got.dtype == torch.float32 and torch.equal(got, want)


def test_cpu_is_symmetric_and_zero_on_identical_images():
    t, p = _pair(SHAPES[3], torch.float32, 3)
    t, p = t.detach(), p.detach()
    assert torch.equal(K.dssim(t, p, 16, impl="cpu"), K.dssim(p, t, 16, impl="cpu"))
    assert torch.all(K.dssim(t, t, 16, impl="cpu").abs() <= 1e-7)


def test_opcheck_cpu():
    t, p = _pair((1, 2, 24, 30, None), torch.float32, 4)
    torch.library.opcheck(op.dssim_cpu, (t, p, [22, 11], [5.0, 5.0], 1.0, True, True))
    torch.library.opcheck(op.dssim_cpu, (t.detach(), p, [5], [1.0], 1.0, False, True))


def test_compile_fullgraph_traces_the_custom_op(monkeypatch):
    # Even when the first DSSIM call of the process happens while tracing (the C library not loaded yet):
    # the dispatch decision runs at trace time (assume_constant_result) instead of being traced.
    monkeypatch.setattr(cpu, "_LIB", cbuild.LazyLibrary(cpu._build, "dssim", "reference"))  # not loaded yet
    graphs = []

    def backend(gm, example_inputs):  # records what dynamo captured, runs it eagerly
        graphs.append(str(gm.graph))
        return gm.forward

    t, p = _pair((2, 3, 40, 40, None), torch.float32, 6, grad_target=False)
    f = torch.compile(lambda pred, tgt: K.saehd_dssim(pred, tgt, 40, impl="cpu"), fullgraph=True, backend=backend)
    got = f(p, t)
    (gg,) = torch.autograd.grad(got.sum(), p)
    want = K.saehd_dssim(p, t, 40, impl="cpu")
    (wg,) = torch.autograd.grad(want.sum(), p)
    assert len(graphs) == 1 and "torchsae.dssim_cpu" in graphs[0], graphs
    assert torch.equal(got, want) and torch.equal(gg, wg)


@pytest.mark.slow
def test_compile_fullgraph_inductor():
    t, p = _pair((2, 3, 64, 64, None), torch.float32, 7, grad_target=False)
    f = torch.compile(lambda pred, tgt: K.saehd_dssim(pred, tgt, 64), fullgraph=True)
    got = f(p, t)
    (gg,) = torch.autograd.grad(got.sum(), p)
    want = K.saehd_dssim(p, t, 64)
    (wg,) = torch.autograd.grad(want.sum(), p)
    assert_verbose_close(got, want, 1e-7, 0, "compiled out")
    assert_verbose_close(gg, wg, 1e-10, 1e-6, "compiled grad")


def test_c_kernel_builds_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHSAE_CACHE", str(tmp_path))
    lib = cpu._build()
    built = list((tmp_path / "kernels").glob("dssim_cpu_*.so"))
    assert len(built) == 1 and hasattr(lib, "dssim_planes")
    assert not list((tmp_path / "kernels").glob("tmp*"))  # the temp file was renamed, not left behind


# -------------------------------------------------------------------------------------------- dispatch
def test_auto_logs_its_choice(caplog, monkeypatch):
    monkeypatch.delenv("TORCHSAE_KERNELS", raising=False)
    monkeypatch.setattr(dispatch, "_logged", set())
    t, p = _pair(SHAPES[1], torch.float32, 0)
    with caplog.at_level(logging.INFO, logger="torchsae.kernels"):
        K.dssim(t, p, 5)
    if not HAS_CUDA:
        assert "dssim: cpu (auto on cpu)" in caplog.text


def test_env_selects_reference(monkeypatch):
    monkeypatch.setenv("TORCHSAE_KERNELS", "reference")
    assert K.choose("cpu") == "reference"
    assert K.choose("cpu", "cpu") == "cpu"  # an explicit impl= wins over the environment
    assert K.choose("cpu", "fast") == "cpu"  # "fast" names the device's fused path
    monkeypatch.setenv("TORCHSAE_KERNELS", "fastest")
    with pytest.raises(KernelChoiceError, match="TORCHSAE_KERNELS = 'fastest': expected one of auto, reference, fast, cpu"):
        K.choose("cpu")


def test_float64_goes_to_reference_or_raises(monkeypatch):
    monkeypatch.delenv("TORCHSAE_KERNELS", raising=False)
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    assert K.dssim(x, x * 0.5, 3).dtype == torch.float64
    with pytest.raises(KernelUnavailableError, match="computes in float32 and was given float64"):
        K.dssim(x, x, 3, impl="cpu")


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-only refusal")
def test_triton_requested_without_cuda_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(KernelUnavailableError, match="dssim: triton was requested but the Triton kernels run on CUDA"):
        K.dssim(x, x, 3, impl="triton")


def test_without_a_compiler_auto_falls_back_and_explicit_raises(monkeypatch, caplog):
    monkeypatch.delenv("TORCHSAE_KERNELS", raising=False)
    def no_compiler():
        raise RuntimeError("no C compiler found (set CC, or install gcc)")

    monkeypatch.setattr(cpu, "_LIB", cbuild.LazyLibrary(no_compiler, "dssim", "reference"))
    monkeypatch.setattr(dispatch, "_logged", set())
    x = torch.rand(1, 1, 8, 8)
    with caplog.at_level(logging.INFO, logger="torchsae.kernels"):
        assert K.choose("cpu") == "reference"
    assert ("dssim: reference (auto on cpu: cpu unavailable: the C kernel cannot be built: no C compiler found"
            in caplog.text)
    with pytest.raises(KernelUnavailableError, match="cpu was requested but the C kernel cannot be built: no C compiler"):
        K.dssim(x, x, 3, impl="cpu")


def test_bad_window_is_reported_before_the_kernel():
    x = torch.rand(1, 1, 8, 10)
    with pytest.raises(ValueError, match=r"filter_size 9 is larger than the image \(8x10\)"):
        K.dssim(x, x, 9, impl="cpu")
    with pytest.raises(ValueError, match=r"filter_size 11 is larger than the image \(8x10\)"):
        K.saehd_dssim(x, x, 128, impl="cpu")


# --------------------------------------------------------------------------- Triton (interpreter, tiny)
TRITON_SHAPES = [
    (1, 1, 9, 9, (9,)),        # window equal to the image
    (2, 3, 13, 17, (5,)),      # prime sizes, H != W
    (1, 2, 12, 10, (1,)),      # window 1
    (1, 1, 24, 20, (6, 3)),    # two windows, one even
]


@pytest.fixture
def interpret(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # read when kernels() decorates; cached per mode


@pytest.mark.parametrize("shape", TRITON_SHAPES, ids=lambda s: "x".join(map(str, s[:4])) + "-w" + "+".join(map(str, s[4])))
def test_triton_interpreted_matches_reference(shape, interpret):
    windows = shape[4]

    def fn(t, p):
        if len(windows) == 1:
            return K.dssim(t, p, windows[0], impl="triton")  # public API -> torchsae::dssim_triton
        return op.dssim_triton(t, p, list(windows), [5.0] * len(windows), 1.0, t.requires_grad, p.requires_grad)[0]

    _check(shape, torch.float32, fn, vs_float64=True)


def test_triton_interpreted_pred_only_bf16(interpret):
    shape = (1, 2, 11, 14, (4,))
    _check(shape, torch.bfloat16, lambda t, p: K.dssim(t, p, 4, impl="triton"), grad_target=False)


def test_triton_kernels_compile_for_sm90(monkeypatch, tmp_path):
    """The GPU compiler (TTIR -> PTX -> cubin via the bundled ptxas) accepts every kernel, no GPU needed.

    The interpreter does not specialise arguments; the compiler turns an int argument equal to 1 into a
    constexpr (P = N·C = 1, fs = 1), so both are compiled here too.
    """
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels.dssim import triton as T

    if "nvidia" not in triton.backends.backends:
        pytest.skip("this triton build has no NVIDIA backend")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    consts = {"BLOCK_H": 8, "BLOCK_W": 128, "GRAD": True, "NEED_A": False, "NEED_B": True}
    for i, kernel in enumerate(T.kernels()):
        names = list(kernel.arg_names)
        ones = {"P", "fs"} if i % 2 == 0 else set()  # specialise in two of the four kernels
        sig, cexpr = {}, {}
        for j, a in enumerate(names):
            if a in consts or a in ones:
                sig[a] = "constexpr"
                cexpr[(j,)] = consts.get(a, 1)
            else:
                sig[a] = "*fp32" if a.endswith("_ptr") else "fp32" if a in ("c1", "c2", "jscale") else "i32"
        compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=cexpr), target=GPUTarget("cuda", 90, 32))
        assert "cubin" in compiled.asm, names


# ------------------------------------------------------------------------------------- Triton on CUDA
@pytest.mark.parametrize("shape", SHAPES + [(8, 3, 256, 256, (22, 11)), (8, 3, 384, 384, (33, 16))],
                         ids=lambda s: "x".join(map(str, s[:4])) + "-w" + "+".join(map(str, s[4])))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_triton_cuda_matches_reference(shape, dtype):
    windows = shape[4]

    def fn(t, p):
        t, p = t.cuda(), p.cuda()
        if len(windows) == 1:
            return K.dssim(t, p, windows[0], impl="triton").cpu()
        return op.dssim_triton(t.float(), p.float(), list(windows), [5.0] * len(windows), 1.0, True, True)[0].cpu()

    _check(shape, dtype, fn)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_triton_cuda_opcheck_and_compile():
    t, p = (x.detach().cuda().requires_grad_() for x in _pair((2, 3, 64, 64, None), torch.float32, 8))
    torch.library.opcheck(op.dssim_triton, (t, p, [22, 11], [5.0, 5.0], 1.0, True, True))
    f = torch.compile(lambda pred, tgt: K.saehd_dssim(pred, tgt, 64), fullgraph=True)
    got = f(p, t.detach())
    (gg,) = torch.autograd.grad(got.sum(), p)
    want = R.saehd_dssim(p, t.detach(), 64)
    (wg,) = torch.autograd.grad(want.sum(), p)
    assert_verbose_close(got, want, 2e-5, 1e-5, "compiled triton out")
    assert_verbose_close(gg, wg, 5e-5 * float(wg.abs().max()), 1e-4, "compiled triton grad")
