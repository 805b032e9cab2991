"""DFL's RMSprop and AdaBelief (docs/dfl.md §3.6): the recorded one-step updates of DFL's own optimizers applied
to the recorded gradients, multi-step formulas against a numpy transcription of docs/dfl.md, lr_dropout,
lr_cos, clipnorm, exact resume from state_dict, DFL optimizer files, and SAEHD's parameter sets.

Every test runs with each of kernels.dfl_update's implementations (TORCHSAE_KERNELS = reference: the per-tensor
formulas, batched: torch._foreach, cpu: the fused C pass), so all three are held to DFL's recorded step and
the formulas. The C kernel has no lr_dropout masks: under "cpu" the lr_dropout tests check that the explicit
request is refused instead."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from engine.errors import CheckpointError, RecipeError, RecipeErrors
from engine.optim import (AdaBelief, RMSprop, dfl_slot_key, dfl_update_settings, freeze_untrainable, make_optimizer,
                          optimizer_from_dfl, optimizer_to_dfl, saehd_param_groups)
from engine.recipe import from_dict, from_options
from engine.recipe.specs import OptimSpec
from kernels.dfl_update import cpu as dfl_cpu
from kernels.errors import KernelUnavailableError

EPS = 1e-6


@pytest.fixture(autouse=True, params=["reference", "batched", "cpu"])
def update_impl(request, monkeypatch):
    """The DFL optimizers' update path for the test (kernels="auto" follows $TORCHSAE_KERNELS)."""
    if request.param == "cpu" and not dfl_cpu.available():
        pytest.skip(f"C kernel unavailable: {dfl_cpu.unavailable_reason()}")
    monkeypatch.setenv("TORCHSAE_KERNELS", request.param)
    return request.param


@pytest.fixture
def dropout_ok(update_impl):
    """For lr_dropout tests: under "cpu" the step must refuse (the C kernel has no masks), then the test
    ends; otherwise it runs."""
    if update_impl == "cpu":
        p = nn.Parameter(torch.zeros(3))
        p.grad = torch.ones(3)
        with pytest.raises(KernelUnavailableError, match="the C kernel has no lr_dropout masks"):
            RMSprop([p], lr_dropout=0.3, seed=1).step()
        pytest.skip("lr_dropout under an explicit cpu request is refused (checked)")


# ---------------------------------------------------------------------------------------------------------
# DFL's recorded step (optimizer only: golden grads in, golden weights out)


def _golden_opt_case(golden, shared_golden):
    d = golden / "train_step"
    grads = np.load(d / "saehd_df-ud_res64_grads.npz")
    init = np.load(shared_golden / "train_step" / "saehd_df-ud_res64_init_weights.npz")
    return grads, init


@pytest.mark.parity
@pytest.mark.parametrize("name", ["rmsprop", "adabelief"])
def test_one_step_matches_dfl_optimizer(golden, shared_golden, name):
    grads, init = _golden_opt_case(golden, shared_golden)
    if name == "rmsprop":
        after = np.load(golden / "train_step" / "saehd_df-ud_res64_rmsprop_weights_after_step.npz")
    else:
        after = np.load(golden / "train_step" / "saehd_df-ud_res64_adabelief_weights_after_step_partial.npz")
    params, refs = [], []
    for k in grads.files:
        base = k.replace("__first4096", "")
        w0 = init[base].ravel()[:4096] if k.endswith("__first4096") else init[base]
        p = nn.Parameter(torch.from_numpy(np.array(w0, dtype=np.float32)))
        p.grad = torch.from_numpy(np.array(grads[k]))
        params.append(p)
        refs.append(after[k] if k in after.files else after[base])
    opt = RMSprop(params) if name == "rmsprop" else AdaBelief(params)
    opt.step()
    for k, p, ref in zip(grads.files, params, refs):
        # one float32 rounding of the weight (~0.1 magnitude): observed <= 1.5e-8
        np.testing.assert_allclose(p.detach().numpy(), ref.reshape(p.shape), rtol=0, atol=3e-8, err_msg=k)
    assert opt.iterations == 1


# ---------------------------------------------------------------------------------------------------------
# formulas over several steps, against a float64 numpy transcription of docs/dfl.md


def _np_rmsprop(w, gs, lr, rho=0.9):
    a = np.zeros_like(w)
    for g in gs:
        a = rho * a + (1 - rho) * g * g
        w = w - lr * g / (np.sqrt(a) + EPS)
    return w


def _np_adabelief(w, gs, lr, b1=0.9, b2=0.999, lr_cos=0):
    m = np.zeros_like(w)
    s = np.zeros_like(w)
    for it, g in enumerate(gs):
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * (g - m) ** 2
        lr_t = lr * (math.cos(it * 2 * math.pi / lr_cos) + 1) / 2 if lr_cos else lr
        w = w - lr_t * m / (np.sqrt(s) + EPS)
    return w


def _grads(n, shape, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype(np.float32) * 10 ** rng.uniform(-7, -1) for _ in range(n)]


@pytest.mark.parametrize("cls", ["rmsprop", "adabelief"])
def test_formula_over_steps(cls):
    w0 = np.random.default_rng(1).normal(size=(7, 5)).astype(np.float32)
    gs = _grads(6, w0.shape)
    p = nn.Parameter(torch.from_numpy(w0.copy()))
    opt = RMSprop([p], lr=1e-3) if cls == "rmsprop" else AdaBelief([p], lr=1e-3, lr_cos=4)
    for g in gs:
        p.grad = torch.from_numpy(g)
        opt.step()
    ref = _np_rmsprop(w0.astype(np.float64), gs, 1e-3) if cls == "rmsprop" else \
        _np_adabelief(w0.astype(np.float64), gs, 1e-3, lr_cos=4)
    np.testing.assert_allclose(p.detach().numpy(), ref, rtol=0, atol=2e-6)


def test_first_rmsprop_step_is_sqrt10_sign():
    # a = 0.1 g² → Δ ≈ lr·√10·sign(g) for |g| ≫ ε (the golden sidecar's note)
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([0.5, -2.0, 1e-3])
    RMSprop([p], lr=1e-2).step()
    torch.testing.assert_close(p.detach()[:2], -1e-2 * math.sqrt(10) * torch.sign(p.grad[:2]), rtol=1e-5, atol=0)
    # ε outside the root: for small |g| the step shrinks by |g|√0.1 / (|g|√0.1 + ε)
    small = -1e-2 * 1e-3 / (math.sqrt(0.1) * 1e-3 + EPS)
    assert p[2].item() == pytest.approx(small, rel=1e-5) and abs(small) < 1e-2 * math.sqrt(10) * 0.997


def test_lr_cos_uses_the_counter_before_increment():
    p = nn.Parameter(torch.zeros(1))
    opt = RMSprop([p], lr=1.0, lr_cos=500)
    g = opt.param_groups[0]
    assert opt.lr_at(g) == 1.0
    assert opt.lr_at(g, 250) == pytest.approx(0.0, abs=1e-12)
    assert opt.lr_at(g, 125) == pytest.approx(0.5)
    p.grad = torch.ones(1)
    opt.step()
    assert opt.lr_at(g) == pytest.approx((math.cos(2 * math.pi / 500) + 1) / 2)


def test_lr_dropout_masks_the_update_but_not_the_moments(dropout_ok):
    p = nn.Parameter(torch.zeros(200_000))
    opt = AdaBelief([p], lr=1e-2, lr_dropout=0.3, seed=5)
    p.grad = torch.ones_like(p)
    opt.step()
    moved = p.detach() != 0
    frac = moved.float().mean().item()
    assert abs(frac - 0.3) < 0.005  # Bernoulli(0.3) per element (5σ ≈ 0.005)
    torch.testing.assert_close(opt.state[p]["ms"], torch.full_like(p, 0.1))  # m updated everywhere
    full = -1e-2 * 0.1 / (math.sqrt(0.001 * 0.81) + EPS)
    torch.testing.assert_close(p.detach()[moved], torch.full((int(moved.sum()),), full))
    # a fresh mask every step
    before = p.detach().clone()
    opt.step()
    moved2 = p.detach() != before
    assert not torch.equal(moved, moved2)


def test_clipnorm_scales_by_global_norm_and_keeps_grads():
    a = nn.Parameter(torch.zeros(2))
    b = nn.Parameter(torch.zeros(1))
    a.grad = torch.tensor([3.0, 0.0])
    b.grad = torch.tensor([4.0])  # global norm 5
    opt = AdaBelief([a, b], lr=1.0, clipnorm=1.0)
    opt.step()
    assert opt.last_grad_norm.item() == pytest.approx(5.0)
    torch.testing.assert_close(opt.state[a]["ms"], torch.tensor([0.06, 0.0]))  # 0.1 * 3/5
    torch.testing.assert_close(opt.state[b]["ms"], torch.tensor([0.08]))
    assert torch.equal(a.grad, torch.tensor([3.0, 0.0]))  # p.grad untouched
    # below the threshold nothing is scaled
    c = nn.Parameter(torch.zeros(1))
    c.grad = torch.tensor([0.5])
    opt = RMSprop([c], clipnorm=1.0)
    opt.step()
    torch.testing.assert_close(opt.state[c]["acc"], torch.tensor([0.1 * 0.25]))


@pytest.mark.parametrize("cls", [RMSprop, AdaBelief])
def test_state_dict_resume_is_exact(cls, dropout_ok):
    def make():
        torch.manual_seed(0)
        m = nn.Linear(30, 20)
        return m, cls(m.parameters(), lr=1e-2, lr_dropout=0.3, lr_cos=7, clipnorm=0.5, seed=11)

    gs = [[torch.randn(20, 30, generator=torch.Generator().manual_seed(i)),
           torch.randn(20, generator=torch.Generator().manual_seed(100 + i))] for i in range(6)]

    def run(m, opt, steps):
        for g in steps:
            for p, gi in zip(m.parameters(), g):
                p.grad = gi.clone()
            opt.step()

    m1, o1 = make()
    run(m1, o1, gs)
    m2, o2 = make()
    run(m2, o2, gs[:3])
    sd_model = {k: v.clone() for k, v in m2.state_dict().items()}
    sd_opt = o2.state_dict()
    m3, o3 = make()
    o3.seed = 999  # must be overwritten by the saved state
    m3.load_state_dict(sd_model)
    o3.load_state_dict(sd_opt)
    assert o3.iterations == 3
    run(m3, o3, gs[3:])
    for p, q in zip(m1.parameters(), m3.parameters()):
        assert torch.equal(p, q)
    # and the dropout mask stream really matters: a different seed diverges
    m4, o4 = make()
    o4.seed = 12
    run(m4, o4, gs)
    assert not torch.equal(m4.weight, m1.weight)


def test_state_dict_survives_torch_save_weights_only(tmp_path, dropout_ok):
    p = nn.Parameter(torch.zeros(4))
    opt = RMSprop([p], lr_dropout=0.3, seed=1)
    p.grad = torch.ones(4)
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "o.pt")
    sd = torch.load(tmp_path / "o.pt", weights_only=True)
    assert sd["dfl"]["iterations"] == 1 and "cpu" in sd["dfl"]["rng"]


def test_invalid_arguments():
    p = [nn.Parameter(torch.zeros(1))]
    with pytest.raises(ValueError, match="keep probability"):
        RMSprop(p, lr_dropout=0.0)
    with pytest.raises(ValueError, match="lr_cos"):
        AdaBelief(p, lr_cos=-1)
    with pytest.raises(ValueError, match="clipnorm"):
        AdaBelief(p, clipnorm=-1.0)


# ---------------------------------------------------------------------------------------------------------
# config / selection


def test_dfl_options_map_onto_the_update():
    # SAEHD's mapping (§3.6): lr_dropout y/cpu -> keep 0.3 with a 500-step cosine, off in pretrain; clipgrad -> 1.0
    s = dfl_update_settings(OptimSpec(name="rmsprop", lr_dropout="y", clipgrad=True))
    assert (s.lr_dropout, s.lr_cos, s.clipnorm) == (0.3, 500, 1.0)
    s = dfl_update_settings(OptimSpec(lr_dropout="cpu"), pretrain=True)
    assert (s.lr_dropout, s.lr_cos, s.clipnorm) == (1.0, 0, 0.0)
    opt = make_optimizer(nn.Linear(3, 2).parameters(), OptimSpec(name="rmsprop", lr_dropout="y", clipgrad=True), seed=1)
    assert isinstance(opt, RMSprop) and opt.defaults["lr_dropout"] == 0.3 and (opt.lr_cos, opt.clipnorm) == (500, 1.0)
    assert opt.defaults["lr"] == 5e-5 and opt.defaults["eps"] == EPS
    # DFL's stored options reach the same spec: the legacy bool form, and unknown values refused by name
    assert from_options({"lr_dropout": True}).optim.lr_dropout == "y"
    with pytest.raises(RecipeErrors, match="lr_dropout"):
        from_options({"lr_dropout": "maybe"})


def test_make_optimizer_by_name():
    m = nn.Linear(3, 2)
    assert isinstance(make_optimizer(m.parameters(), OptimSpec()), AdaBelief)
    assert isinstance(make_optimizer(m.parameters(), OptimSpec(name="rmsprop")), RMSprop)
    adam = make_optimizer(m.parameters(), OptimSpec(name="adam", lr=1e-3))
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["eps"] == 1e-6
    assert isinstance(make_optimizer(m.parameters(), OptimSpec(name="adamw", weight_decay=0.01)), torch.optim.AdamW)
    with pytest.raises(RecipeError, match="sgd"):
        make_optimizer(m.parameters(), OptimSpec(name="sgd"))
    # the recipe refuses what the optimizer cannot do
    with pytest.raises(RecipeErrors, match="lr_dropout"):
        from_dict({"optim": {"name": "adam", "lr_dropout": "y"}})
    with pytest.raises(RecipeErrors, match="sgd"):
        from_dict({"optim": {"name": "sgd"}})


def test_adam_clipnorm_hook_uses_dfl_rule():
    p = nn.Parameter(torch.zeros(2))
    opt = make_optimizer([p], OptimSpec(name="adam", lr=0.1, clipgrad=True))
    p.grad = torch.tensor([3.0, 4.0])
    opt.step()
    assert opt.last_grad_norm.item() == pytest.approx(5.0)
    torch.testing.assert_close(p.grad, torch.tensor([0.6, 0.8]))  # clipped in place before Adam's step
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor([0.06, 0.08]))


class _Liae(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(2, 2)
        self.inter_AB = nn.Linear(2, 2)
        self.inter_B = nn.Linear(2, 2)
        self.decoder = nn.Linear(2, 2)
        self.extra = nn.Linear(2, 2)  # e.g. a discriminator: in neither set


class _Df(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(2, 2)
        self.inter = nn.Linear(2, 2)
        self.decoder_src = nn.Linear(2, 2)
        self.decoder_dst = nn.Linear(2, 2)


def test_saehd_param_groups():
    m = _Liae()
    tr, sv = saehd_param_groups(m, "liae", random_warp=True)
    assert list(sv) == list(tr) and len(sv) == 8 and not any(n.startswith("extra") for n in sv)
    tr, sv = saehd_param_groups(m, "liae", random_warp=False)
    assert len(sv) == 8 and set(sv) - set(tr) == {"inter_AB.weight", "inter_AB.bias"}
    assert freeze_untrainable(sv, tr) == ["inter_AB.weight", "inter_AB.bias"]
    assert not m.inter_AB.weight.requires_grad and m.inter_B.weight.requires_grad
    tr, sv = saehd_param_groups(_Df(), "df", random_warp=False)
    assert list(tr) == list(sv) and len(tr) == 8
    with pytest.raises(RecipeError, match="inter_AB"):
        saehd_param_groups(_Df(), "liae", random_warp=True)
    with pytest.raises(RecipeError, match="valid: df, liae"):
        saehd_param_groups(_Df(), "dfx", random_warp=True)


def test_frozen_params_keep_zero_state_and_export_zeros():
    m = _Liae()
    tr, sv = saehd_param_groups(m, "liae", random_warp=False)
    freeze_untrainable(sv, tr)
    opt = RMSprop(sv.values())
    x = torch.randn(4, 2)
    (m.decoder(torch.cat([m.inter_B(m.encoder(x))], 1)) + m.inter_AB(m.encoder(x))).sum().backward()
    before = m.inter_AB.weight.detach().clone()
    opt.step()
    assert torch.equal(m.inter_AB.weight, before) and m.inter_AB.weight not in opt.state
    names = {n.replace(".", "/") + ":0": p for n, p in sv.items()}
    data = optimizer_to_dfl(opt, names, lambda n, a: a.T if a.ndim == 2 else a)
    assert np.all(data[dfl_slot_key("acc", "inter_AB/weight:0")] == 0)
    assert data["iters:0"] == 1 and data["iters:0"].dtype == np.int64


def test_dfl_optimizer_file_round_trip():
    torch.manual_seed(0)
    m = _Df()
    opt = AdaBelief(m.parameters())
    for _ in range(2):
        m.zero_grad()
        m.decoder_src(m.inter(m.encoder(torch.randn(3, 2)))).square().sum().backward()
        opt.step()
    names = {n.replace(".", "/") + ":0": p for n, p in m.named_parameters()}
    to_tf = lambda n, a: a.T if a.ndim == 2 else a  # noqa: E731 - dense layout
    data = optimizer_to_dfl(opt, names, to_tf)
    assert "ms_encoder/weight_0:0" in data and "vs_decoder_dst/bias_0:0" in data
    np.testing.assert_array_equal(data["ms_encoder/weight_0:0"], opt.state[m.encoder.weight]["ms"].numpy().T)
    opt2 = AdaBelief(m.parameters())
    optimizer_from_dfl(opt2, data, names, to_tf)
    assert opt2.iterations == 2
    for p in m.parameters():
        for k in ("ms", "vs"):  # decoder_dst never had a gradient: zeros both ways
            assert torch.equal(opt2.state[p][k], opt.state[p].get(k, torch.zeros_like(p)))
    del data["vs_inter/bias_0:0"]
    with pytest.raises(CheckpointError, match="vs_inter/bias_0:0"):
        optimizer_from_dfl(opt2, data, names, to_tf, source="src_dst_opt.npy")


def test_dfl_slot_key_matches_recorded_names():
    # DFL's own state names (golden info sidecar): golden_rmsprop/acc_encoder/down1/downs_0/conv1/weight_0:0
    assert dfl_slot_key("acc", "encoder/down1/downs_0/conv1/weight:0") == "acc_encoder/down1/downs_0/conv1/weight_0:0"
    assert dfl_slot_key("ms", "encoder/down1/downs_0/conv1/bias:0") == "ms_encoder/down1/downs_0/conv1/bias_0:0"
