"""One SAEHD training step against DFL's real Model_SAEHD (golden train_step/: df-ud res 64, ae 64, e 16,
d 16, dm 16, batch 2, face type f, masked training), plus the D steps' order and the LIAE freeze.

DFL weights are loaded with the production importer (engine.dfl.load_dfl_weights); gradients and weights
are compared in DFL's TF layout (engine.dfl.keymap). DFL's own training step races with itself (golden
README), so the reference is DFL's race-free gradient and its optimizers applied to it.

Tolerances (fp32, all observed on this machine, CPU):
  per-sample losses     rtol 2e-5   (observed 4e-6; TF sums float32 sequentially)
  forward predictions   atol 2e-5   (observed <= 3e-6 on values in [0, 1])
  gradients             max|Δ| <= 1e-4 · max|g_ref| per tensor (observed <= 4.6e-5)
  weights after 1 step  atol 1e-5 and at most 0.05 % of elements above 1e-6 (observed 4.9e-6, 19 of
                        213k). The first RMSprop/AdaBelief step is ≈ lr·√10·sign(g) resp. ≈ lr·3.5·sign(g);
                        only elements with |g| near ε=1e-6 are sensitive to the gradient's rounding.
  losses after the step rtol 1e-4
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from engine.dfl import load_dfl_weights
from engine.dfl.keymap import torch_to_dfl_array, torch_to_dfl_name
from engine.graph import build
from engine.losses import LossRuntime, code_d_loss, gan_d_loss, prepare_targets, saehd_losses
from engine.modules.discriminators import CodeDiscriminator, UNetPatchDiscriminator
from engine.optim import AdaBelief, RMSprop, freeze_untrainable, global_grad_norm, saehd_param_groups
from engine.recipe.specs import LossSpec, ModelSpec
from engine.train.step import SAEHDStep, saehd_train_step


def loss(resolution: int = 64, *, pretrain: bool = False, **spec) -> tuple[LossSpec, LossRuntime]:
    """(the [loss] spec, its runtime) for the step and loss functions."""
    return LossSpec(**spec), LossRuntime(resolution=resolution, pretrain=pretrain)


STEM = "saehd_df-ud_res64"
SPEC = ModelSpec(archi="df-ud", resolution=64, face_type="f", ae_dims=64, e_dims=16, d_dims=16, d_mask_dims=16)


def nchw(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))


@pytest.fixture(scope="module")
def init_weights(shared_golden):
    # 14.8 MB, not copied into tests/golden: read from the shared golden folder
    w = np.load(shared_golden / "train_step" / f"{STEM}_init_weights.npz")
    return {k: w[k] for k in w.files}


@pytest.fixture(scope="module")
def data(golden):
    d = golden / "train_step"
    inp = np.load(d / f"{STEM}_inputs.npz")
    return {
        "batch": {k: nchw(inp[k]) for k in inp.files},
        "results": np.load(d / f"{STEM}_results.npz"),
        "grads": np.load(d / f"{STEM}_grads.npz"),
        "rmsprop": np.load(d / f"{STEM}_rmsprop_weights_after_step.npz"),
        "adabelief": np.load(d / f"{STEM}_adabelief_weights_after_step_partial.npz"),
    }


def dfl_model(init_weights):
    torch.manual_seed(0)
    model = build(SPEC)
    load_dfl_weights(model, init_weights, f"{STEM}_init_weights.npz")
    return model


def stored(npz, name: str, arr_tf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ours, reference) for DFL variable `name`: whole, or the first 4096 C-order elements when the golden
    file keeps only those (key suffix __first4096, or shape (4096,) in the AdaBelief partial file)."""
    if name in npz.files:
        ref = npz[name]
        if ref.shape != arr_tf.shape:  # adabelief partial file: first 4096 under the plain name
            return arr_tf.ravel()[: ref.size], ref
        return arr_tf, ref
    return arr_tf.ravel()[:4096], npz[name + "__first4096"]


def tf_arrays(model, what: str):
    for key, p in model.named_parameters():
        t = p.grad if what == "grad" else p.detach()
        yield torch_to_dfl_name(key, strip_part=False), torch_to_dfl_array(t.numpy())


def eval_losses(model, batch):
    with torch.no_grad():
        outs = model.forward_train(batch["warped_src"], batch["warped_dst"])
        return saehd_losses(outs, batch, *loss())


@pytest.mark.parity
def test_forward_and_per_sample_losses(init_weights, data):
    model = dfl_model(init_weights)
    res = data["results"]
    b = data["batch"]
    with torch.no_grad():
        # the recorded predictions are DFL's AE_view(target_src, target_dst): the graph on the targets
        view = model.forward_train(b["target_src"], b["target_dst"])
        outs = model.forward_train(b["warped_src"], b["warped_dst"])
    for k in ("pred_src_src", "pred_dst_dst", "pred_dst_dstm", "pred_src_dst", "pred_src_dstm"):
        np.testing.assert_allclose(view[k].permute(0, 2, 3, 1).numpy(), res[k], rtol=0, atol=2e-5, err_msg=k)
    losses = saehd_losses(outs, b, *loss())
    np.testing.assert_allclose(losses["src_loss"].numpy(), res["src_loss"], rtol=2e-5)
    np.testing.assert_allclose(losses["dst_loss"].numpy(), res["dst_loss"], rtol=2e-5)


def _check_step(model, data, opt_name, result):
    res = data["results"]
    # step result: batch means and the gradient norm
    assert result.losses["src_loss"] == pytest.approx(float(res["src_loss"].mean()), rel=2e-5)
    assert result.losses["dst_loss"] == pytest.approx(float(res["dst_loss"].mean()), rel=2e-5)
    assert result.losses["G_loss"] == pytest.approx(result.losses["src_loss"] + result.losses["dst_loss"], rel=1e-6)
    assert result.grad_norm == pytest.approx(global_grad_norm([p.grad for p in model.parameters()]).item(), rel=1e-6)
    # every gradient (p.grad still holds the race-free gradient at the init weights)
    n_checked = 0
    for name, g in tf_arrays(model, "grad"):
        ours, ref = stored(data["grads"], name, g)
        scale = np.abs(ref).max()
        err = np.abs(ours - ref).max()
        assert err <= 1e-4 * scale, f"grad {name}: max err {err:.3g} vs max |g| {scale:.3g}"
        n_checked += 1
    assert n_checked == 86
    # weights after the step
    errs = []
    for name, w in tf_arrays(model, "weight"):
        ours, ref = stored(data[opt_name], name, w)
        e = np.abs(ours - ref.reshape(ours.shape)).ravel()
        assert e.max() <= 1e-5, f"{opt_name} weight {name}: max err {e.max():.3g}"
        errs.append(e)
    e = np.concatenate(errs)
    assert (e > 1e-6).mean() <= 5e-4, f"{(e > 1e-6).sum()} of {e.size} weights off by > 1e-6"
    # losses on the same batch after the step
    after = eval_losses(model, data["batch"])
    np.testing.assert_allclose(after["src_loss"].numpy(), res[f"{opt_name}_src_loss_after_step"], rtol=1e-4)
    np.testing.assert_allclose(after["dst_loss"].numpy(), res[f"{opt_name}_dst_loss_after_step"], rtol=1e-4)


@pytest.mark.parity
def test_one_rmsprop_step_matches_dfl(init_weights, data):
    model = dfl_model(init_weights)
    opt = RMSprop(model.parameters(), lr=5e-5)
    result = saehd_train_step(model, opt, data["batch"], *loss())
    _check_step(model, data, "rmsprop", result)


@pytest.mark.parity
def test_one_adabelief_step_matches_dfl(init_weights, data):
    """Through the trainer's GuardedOptimizer (NaN guard), whose norm the step reports (RMSprop above: a
    bare optimizer, the step computes the norm itself)."""
    from engine.train.distributed import DistInfo, GuardedOptimizer

    model = dfl_model(init_weights)
    step = SAEHDStep(model, GuardedOptimizer(AdaBelief(model.parameters(), lr=5e-5), DistInfo()),
                     *loss())
    _check_step(model, data, "adabelief", step(data["batch"]))


# ---------------------------------------------------------------------------------------------------------
# D steps (§3.7): order, fresh forward with the updated generator, D weights untouched by the G step


def _small_batch(n=2, res=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    b = {k: torch.rand(n, 3, res, res, generator=gen) for k in ("warped_src", "target_src", "warped_dst", "target_dst")}
    for k in ("target_srcm", "target_dstm", "target_srcm_em", "target_dstm_em"):
        m = torch.zeros(n, 1, res, res)
        m[..., res // 4: 3 * res // 4, res // 4: 3 * res // 4] = 1
        b[k] = m
    return b


def test_d_steps_follow_the_generator_update(init_weights):
    model = dfl_model(init_weights)
    torch.manual_seed(1)
    code_d = CodeDiscriminator(64, 8)
    gan_d = UNetPatchDiscriminator(8, 3, 16)
    cfg = loss(true_face_power=0.3, gan_power=0.5)
    batch = _small_batch()
    model0, code_d0, gan_d0 = copy.deepcopy(model), copy.deepcopy(code_d), copy.deepcopy(gan_d)
    res = saehd_train_step(model, RMSprop(model.parameters()), batch, *cfg, code_d=code_d,
                           code_d_opt=RMSprop(code_d.parameters()), gan_d=gan_d, gan_d_opt=RMSprop(gan_d.parameters()))
    # G terms used the discriminators as they were before their own steps
    with torch.no_grad():
        outs0 = model0.forward_train(batch["warped_src"], batch["warped_dst"])
        g0 = saehd_losses(outs0, batch, *cfg, code_d=code_d0, gan_d=gan_d0)
    for k in ("true_face", "gan", "gan_tv", "gan_bg_mse", "G_loss"):
        assert res.losses[k] == pytest.approx(g0[k].mean().item(), rel=1e-5), k
    # D losses are computed with the UPDATED generator and the pre-step discriminators
    tg = prepare_targets(batch, *cfg)
    code_d0.zero_grad()
    gan_d0.zero_grad()
    with torch.no_grad():
        outs1 = model.forward_train(batch["warped_src"], batch["warped_dst"])
    dc = code_d_loss(code_d0, outs1["src_code"], outs1["dst_code"])
    dg = gan_d_loss(gan_d0, outs1["pred_src_src"] * tg.srcm_blur, tg.tS)
    assert res.losses["D_code_loss"] == pytest.approx(dc.mean().item(), rel=1e-5)
    assert res.losses["D_gan_loss"] == pytest.approx(dg.mean().item(), rel=1e-5)
    # the D gradients are those of the D losses alone (the G backward left them alone)
    (dc.sum() + dg.sum()).backward()
    for d, d0 in ((code_d, code_d0), (gan_d, gan_d0)):
        for (n, p), (_, p0) in zip(d.named_parameters(), d0.named_parameters()):
            torch.testing.assert_close(p.grad, p0.grad, rtol=1e-4, atol=1e-7, msg=n)
            assert not torch.equal(p, p0), n  # and the D optimizers stepped
            assert p.requires_grad


def test_pretrain_skips_the_code_d_step_but_keeps_the_true_face_term(init_weights):
    model = dfl_model(init_weights)
    code_d = CodeDiscriminator(64, 8)
    before = copy.deepcopy(code_d.state_dict())
    cfg = loss(true_face_power=0.3, gan_power=0.5, pretrain=True)
    res = saehd_train_step(model, RMSprop(model.parameters()), _small_batch(), *cfg, code_d=code_d,
                           code_d_opt=RMSprop(code_d.parameters()))
    assert "true_face" in res.losses and "D_code_loss" not in res.losses and "gan" not in res.losses
    for k, v in code_d.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_liae_without_random_warp_freezes_inter_ab():
    torch.manual_seed(0)
    model = build(ModelSpec(archi="liae-ud", resolution=64, ae_dims=32, e_dims=16, d_dims=16, d_mask_dims=16))
    trainable, saveable = saehd_param_groups(model, "liae", random_warp=False)
    freeze_untrainable(saveable, trainable)
    opt = AdaBelief(saveable.values())
    before = {k: v.detach().clone() for k, v in saveable.items()}
    saehd_train_step(model, opt, _small_batch(), *loss())
    for k, p in saveable.items():
        changed = not torch.equal(p.detach(), before[k])
        assert changed == (not k.startswith("inter_AB.")), k


def test_step_with_cpu_autocast_is_finite(init_weights):
    model = dfl_model(init_weights)
    res = saehd_train_step(model, AdaBelief(model.parameters()), _small_batch(), *loss(),
                           autocast=lambda: torch.autocast("cpu", torch.bfloat16))
    assert all(np.isfinite(v) for v in res.losses.values()) and np.isfinite(res.grad_norm)


def test_latent_distill_hook_adds_to_g_loss_and_leaves_the_teacher_alone(init_weights):
    from engine.losses import latent_distill
    from engine.train.extra_losses import latent_distill_hook

    model = dfl_model(init_weights)
    torch.manual_seed(5)
    teacher = build(SPEC)
    t_before = copy.deepcopy(teacher.state_dict())
    model0 = copy.deepcopy(model)
    batch = _small_batch()
    res = saehd_train_step(model, RMSprop(model.parameters()), batch, *loss(),
                           extra_losses=latent_distill_hook(teacher, weight=3.0))
    with torch.no_grad():
        outs = model0.forward_train(batch["warped_src"], batch["warped_dst"])
        exp = (latent_distill(outs["src_code"], teacher.code(batch["warped_src"], "src"), "mse", 3.0)
               + latent_distill(outs["dst_code"], teacher.code(batch["warped_dst"], "dst"), "mse", 3.0))
        base = saehd_losses(outs, batch, *loss())["G_loss"]
    assert res.losses["latent_distill"] == pytest.approx(exp.mean().item(), rel=1e-5)
    assert res.losses["G_loss"] == pytest.approx((base + exp).mean().item(), rel=1e-5)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, t_before[k]), k
    assert not any(p.requires_grad for p in teacher.parameters())
