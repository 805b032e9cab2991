"""DFL's optimizer update (kernels/dfl_update): the fused C pass ("cpu") and the torch._foreach path ("batched")
against the per-tensor reference (float64, and through the optimizers), on odd sizes, channels_last
parameters, several tensors split across threads, with and without DFL's clipnorm factor and lr_dropout;
fallbacks and dispatch."""

from __future__ import annotations

import logging

import pytest
import torch

from engine.optim import AdaBelief, RMSprop
from kernels import dfl_update, dispatch
from kernels.dfl_update import batched, cpu, reference

pytestmark = pytest.mark.skipif(not cpu.available(), reason=f"C kernel unavailable: {cpu.unavailable_reason()}")

# 1 element, primes, a 4-D conv kernel, and one big enough that update_ splits it across threads
SHAPES = [(1,), (7,), (13, 5), (17, 3, 3, 3), (70_001,)]


def _tensors(seed: int, shapes=SHAPES, channels_last: bool = False):
    g = torch.Generator().manual_seed(seed)
    ps, gs = [], []
    for s in shapes:
        p = torch.randn(s, generator=g)
        gr = torch.randn(s, generator=g) * 1e-2
        if channels_last and len(s) == 4:
            p, gr = p.to(memory_format=torch.channels_last), gr.to(memory_format=torch.channels_last)
        ps.append(p)
        gs.append(gr)
    return ps, gs


@pytest.mark.parametrize("kind", ["rmsprop", "adabelief"])
@pytest.mark.parametrize("grad_scale", [1.0, 0.37])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_matches_float64_oracle(kind, grad_scale, channels_last):
    torch.set_num_threads(2)  # the conftest pins 1; exercise the threaded split here
    try:
        ps, gs = _tensors(1, channels_last=channels_last)
        nslots = 1 if kind == "rmsprop" else 2
        slots = [[torch.zeros_like(p) for p in ps] for _ in range(nslots)]
        ref_p = [p.double() for p in ps]
        ref_s = [[s.double() for s in row] for row in slots]
        hyper = dict(eps=1e-6, c1=0.9, c2=0.999 if kind == "adabelief" else 0.0)
        for step in range(3):  # moments carried over steps
            gsc = [g * (1 + step) for g in gs]
            cpu.update_(kind, ps, gsc, slots, lr=1e-3, grad_scale=grad_scale, **hyper)
            for i in range(len(ps)):
                if kind == "rmsprop":
                    reference.rmsprop_(ref_p[i], gsc[i].double(), ref_s[0][i], lr=1e-3, rho=0.9, eps=1e-6,
                                       grad_scale=grad_scale)
                else:
                    reference.adabelief_(ref_p[i], gsc[i].double(), ref_s[0][i], ref_s[1][i], lr=1e-3, beta_1=0.9,
                                         beta_2=0.999, eps=1e-6, grad_scale=grad_scale)
        # float32 vs float64: AdaBelief's g − m cancels, so the second moment's error is relative to its
        # largest element, not to each element; the parameters move by ~lr, so 5e-7 absolute is ~1e-4 of a step
        for i, s in enumerate(SHAPES):
            torch.testing.assert_close(ps[i].double(), ref_p[i], rtol=1e-6, atol=5e-7, msg=f"param {s}")
            for k in range(nslots):
                scale = float(ref_s[k][i].abs().max())
                torch.testing.assert_close(slots[k][i].double(), ref_s[k][i], rtol=1e-4, atol=1e-5 * scale,
                                           msg=f"slot {k} {s}")
        if channels_last:
            assert ps[3].is_contiguous(memory_format=torch.channels_last)
    finally:
        torch.set_num_threads(1)


@pytest.mark.parametrize("cls", [RMSprop, AdaBelief])
def test_optimizer_paths_agree(cls):
    """The same optimizer and steps through kernels="cpu", "batched" and "reference": float32 rounding apart
    (the fused loop may contract into FMAs, foreach divides once), with clipnorm on."""
    results = []
    for impl in ("cpu", "batched", "reference"):
        ps, gs = _tensors(2, channels_last=True)
        params = [torch.nn.Parameter(p) for p in ps]
        opt = cls(params, lr=1e-3, clipnorm=0.05, kernels=impl)
        for step in range(4):
            for p, g in zip(params, gs):
                p.grad = g * (step + 1)
            opt.step()
        results.append(([p.detach().clone() for p in params], [dict(opt.state[p]) for p in params]))
    pr, sr = results[-1]
    for pf, sf in results[:-1]:
        for a, b in zip(pf, pr):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=5e-7)
        for a, b in zip(sf, sr):
            for k in a:
                torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5 * float(b[k].abs().max()))


@pytest.mark.parametrize("kind", ["rmsprop", "adabelief"])
def test_batched_with_lr_dropout_matches_reference(kind):
    """lr_dropout: the same masks (drawn per tensor in parameter order from one generator) and the same
    moments everywhere, through the batched path and the reference; the clip factor as a 0-dim tensor."""
    out = []
    for impl in (batched, reference):
        ps, gs = _tensors(3, channels_last=True)
        slots = [[torch.zeros_like(p) for p in ps] for _ in range(1 if kind == "rmsprop" else 2)]
        gen = torch.Generator().manual_seed(4)
        for _ in range(2):
            impl.update_(kind, ps, gs, slots, lr=1e-2, eps=1e-6, c1=0.9, c2=0.999, grad_scale=torch.tensor(0.5),
                         keep_prob=0.3, generator=gen)
        out.append((ps, slots))
    (pb, sb), (pr, sr) = out
    for a, b in zip(pb, pr):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=5e-7)
    moved = pb[-1] != _tensors(3)[0][-1]
    assert 0.4 < moved.float().mean().item() < 0.6  # two steps of keep 0.3: 1 − 0.7² = 0.51
    for ra, rb in zip(sb, sr):
        for a, b in zip(ra, rb):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)


def test_unfusable_tensors_take_the_batched_path(monkeypatch):
    """A gradient laid out differently from its parameter takes the batched path, the bucket's other
    parameters the C kernel; both give the formula's result."""
    p = torch.nn.Parameter(torch.randn(8, 6))
    g = torch.randn(6, 8).t()  # same shape, transposed strides
    assert cpu.fusable([p], [g], [[torch.zeros_like(p)]]) is not None
    assert cpu.fusable([p.detach().double()], [g.double()], [[torch.zeros(8, 6, dtype=torch.float64)]]) is not None
    w = torch.zeros(3, 8, 1, 1).to(memory_format=torch.channels_last)  # 1x1 kernel: size-1 strides do not matter
    assert cpu.fusable([w], [torch.zeros(3, 8, 1, 1)], [[torch.zeros_like(w)]]) is None
    q = torch.nn.Parameter(torch.randn(5, 7))
    gq = torch.randn(5, 7)
    fused_sizes = []
    real = cpu.update_
    monkeypatch.setattr(cpu, "update_", lambda kind, ps, *a, **k: (fused_sizes.extend(x.numel() for x in ps),
                                                                   real(kind, ps, *a, **k)))
    opt = RMSprop([p, q], lr=1e-2, kernels="cpu")
    want = [p.detach().double().clone(), q.detach().double().clone()]
    p.grad, q.grad = g, gq
    opt.step()
    assert fused_sizes == [35]  # only q went through the C kernel
    for x, gr, got in zip(want, (g, gq), (p, q)):
        reference.rmsprop_(x, gr.double(), torch.zeros_like(x), lr=1e-2, rho=0.9, eps=1e-6)
        torch.testing.assert_close(got.detach().double(), x, rtol=1e-6, atol=1e-7)


def test_dispatch_logs_and_refuses_an_unavailable_explicit_request(monkeypatch, caplog):
    monkeypatch.setattr(dispatch, "_logged", set())
    monkeypatch.delenv("TORCHSAE_KERNELS", raising=False)
    with caplog.at_level(logging.INFO, logger="torchsae.kernels"):
        assert dfl_update.choose("cpu") == "cpu"
        assert dfl_update.choose("cuda") == "batched"  # foreach (multi-tensor apply) on GPUs
        assert dfl_update.choose("cpu", keep_prob=0.3) == "batched"
        assert dfl_update.choose("cpu", "triton") == "cpu"  # no Triton path: auto, and the log says so
        assert dfl_update.choose("cuda", "fast") == "batched"
    assert "dfl_update: cpu (auto on cpu)" in caplog.text
    assert "dfl_update: batched (auto on cuda)" in caplog.text
    assert "dfl_update: batched (auto on cpu: cpu unavailable: the C kernel has no lr_dropout masks" in caplog.text
    assert "dfl_update: cpu (triton requested, which names no dfl_update implementation; auto on cpu)" in caplog.text
    assert "dfl_update: batched (fast requested, which names no dfl_update implementation on cuda" in caplog.text
    assert dfl_update.choose("cpu", "reference") == "reference"
    assert dfl_update.choose("cuda", "batched") == "batched"
    with pytest.raises(dispatch.KernelUnavailableError, match="dfl_update: cpu was requested but the C kernel takes "
                                                              "CPU tensors; the tensors are on cuda"):
        dfl_update.choose("cuda", "cpu")
    with pytest.raises(dispatch.KernelUnavailableError, match="cpu was requested but the C kernel has no lr_dropout"):
        dfl_update.choose("cpu", "cpu", keep_prob=0.3)
    with pytest.raises(dispatch.KernelUnavailableError, match=r"cpu \(fast on cpu\) was requested but the C kernel takes float32"):
        dfl_update.choose("cpu", "fast", dtype=torch.float64)

    class Broken:
        reason = "no C compiler found (set CC, or install gcc)"

        def get(self):
            return None

    monkeypatch.setattr(cpu, "_LIB", Broken())
    assert dfl_update.choose("cpu", "auto") == "batched"
    with pytest.raises(dispatch.KernelUnavailableError, match="no C compiler"):
        dfl_update.choose("cpu", "cpu")
    with pytest.raises(dispatch.KernelChoiceError, match="kernels = 'fastest'"):
        AdaBelief([torch.nn.Parameter(torch.zeros(2))], kernels="fastest")


def test_optimizer_calls_the_op_with_its_request(monkeypatch):
    """engine/optim hands the update to kernels.dfl_update with the optimizer's `kernels` request, the
    bucket's tensors, the clip factor and the lr_dropout generator (the op chooses; the optimizer does not)."""
    calls = []
    real = dfl_update.update_
    monkeypatch.setattr(dfl_update, "update_", lambda *a, **k: (calls.append((a, k)), real(*a, **k))[1])
    p = torch.nn.Parameter(torch.zeros(5))
    opt = AdaBelief([p], lr=1e-2, lr_dropout=0.5, clipnorm=1.0, kernels="batched", seed=3)
    p.grad = torch.ones(5)
    opt.step()
    (args, kw), = calls
    assert args[0] == "adabelief" and args[1] == [p] and kw["impl"] == "batched" and kw["keep_prob"] == 0.5
    assert kw["generator"] is opt._generator(p.device) and torch.is_tensor(kw["grad_scale"])
    assert (kw["c1"], kw["c2"], kw["eps"]) == (0.9, 0.999, 1e-6)
