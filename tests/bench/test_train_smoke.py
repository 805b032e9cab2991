"""Smoke test of bench suite "train"'s helpers (bench/train/common.py, profile_step.py) on a tiny model, so
the suite cannot rot between `make bench` runs. Runs in a few seconds."""

from __future__ import annotations

import re
import types

import pytest
import torch
from torch import nn

from bench.train import common
from bench.train.profile_step import categorize
from engine.train.step import BATCH_KEYS

TINY = common.BenchConfig(key="df-ud", recipe="recipes/tests/tiny_df.toml")


def test_synthetic_batch_shapes_ranges_and_seed():
    b = common.synthetic_batch(3, 16, seed=5)
    assert set(b) == set(BATCH_KEYS)
    for k, v in b.items():
        assert v.dtype == torch.float32
        assert v.shape == ((3, 1, 16, 16) if k.endswith(("m", "m_em")) else (3, 3, 16, 16)), k
        assert 0.0 <= float(v.min()) and float(v.max()) <= 1.0
    for k in ("target_srcm", "target_dstm_em"):
        assert set(torch.unique(b[k]).tolist()) <= {0.0, 1.0}
    assert torch.equal(b["warped_src"], common.synthetic_batch(3, 16, seed=5)["warped_src"])
    assert not torch.equal(b["warped_src"], common.synthetic_batch(3, 16, seed=6)["warped_src"])


def test_conv_flops_formula():
    # 2 * N * Cout * Hout * Wout * Cin * k^2, by hand: 2 * 2 * 5 * 4 * 3 * 7 * 9
    assert common.conv_flops(2, 7, 5, 4, 3, 3) == 15120


def _analytic_step_flops(model: nn.Module, batch) -> int:
    """Independent count from module hooks: per conv / dense call F = 2·out.numel()·(fan-in per output);
    forward F, backward F (weight grad) + F more when the layer's input requires grad (input grad)."""
    total = 0

    def hook(mod, inputs, out):
        nonlocal total
        x = inputs[0]
        if isinstance(mod, nn.Conv2d):
            f = 2 * out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        else:
            f = 2 * out.numel() * mod.in_features
        total += f * (3 if x.requires_grad else 2)

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        out = type(model).forward_train(model, batch["warped_src"], batch["warped_dst"])
        del out
    finally:
        for h in hs:
            h.remove()
    return total


def test_tiny_trainer_step_flops_and_timer(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHSAE_KERNELS", "fast")  # DSSIM as an opaque kernel (no convs to count)
    r = common.load_recipe(TINY, "eager-bf16", run_dir=tmp_path / "run")
    assert (r.train.amp, r.compile.mode, r.compile.channels_last, r.train.device) == ("bf16", "off", False, "cpu")
    cl = common.load_recipe(TINY, "eager-bf16-cl", run_dir=tmp_path / "run")
    assert (cl.train.amp, cl.compile.mode, cl.compile.channels_last) == ("bf16", "off", True)
    assert [v.warmup for v in common.VARIANTS.values()] == [1, 1, 1, 2, 2]
    with common.make_trainer(r) as t:
        batch = common.synthetic_batch(r.train.batch_size, r.model.resolution)
        flops = common.step_flops(t, batch)
        # plus the loss's mask blur (prepare_targets, §3.3): 2 masks × 2 separable passes of ks taps, no grad,
        # ks = max(3, int(4σ)) made odd (DFL gaussian_blur, §4.2)
        sigma = t.step_fn.runtime.sigma_mask
        ks = max(3, int(4 * sigma))
        ks += 1 - ks % 2
        n, res = r.train.batch_size, r.model.resolution
        blur = 2 * 2 * (2 * n * res * res * ks)
        assert flops == _analytic_step_flops(t.model, batch) + blur > blur
        assert all(p.grad is None for p in t.model.parameters())  # counting leaves no gradients behind
        before = [p.detach().clone() for p in t.model.parameters() if p.requires_grad]
        timer = common.CallTimer(lambda: t.train_one(batch))
        for _ in range(2):
            timer()
        assert t.step == 2 and t.skipped == 0
        assert any(not torch.equal(a, p) for a, p in zip(before, (p for p in t.model.parameters() if p.requires_grad)))
        wall, cpu = timer.medians()
        assert len(timer.wall) == len(timer.cpu) == len(timer.others) == 2 and wall > 0 and cpu > 0
        assert all(o >= 0 for o in timer.others)
        assert common.trainable_params(t.model) == sum(p.numel() for p in t.model.parameters() if p.requires_grad)


def test_call_timer_quiet_uses_dfls_ten_percent_criterion():
    timer = common.CallTimer(lambda: None)
    # (wall, others' CPU): quiet when others < 0.1 * wall -> calls 1 and 3 (0.05 < 0.1, 0.0 < 0.3)
    timer.wall, timer.cpu, timer.others = [1.0, 2.0, 3.0, 4.0], [1.0] * 4, [0.05, 0.5, 0.0, 0.4]
    assert timer.quiet() == (2, 2.0, 0.225)
    assert timer.quiet(last=2) == (1, 3.0, 0.2)
    assert timer.medians(last=3) == (3.0, 1.0)
    timer.others = [1.0] * 4
    assert timer.quiet()[:2] == (0, None)
    with pytest.raises(ValueError, match="no calls"):
        common.CallTimer(lambda: None).medians()


def test_bench_configs_match_dfl_recordings(tmp_path):
    # the recipes benchmarked are DFL's recorded configurations (dims, resolution, batch, optimizer)
    for key, cfg in common.CONFIGS.items():
        d = cfg.dfl
        r = common.load_recipe(cfg, "eager-fp32", run_dir=tmp_path)
        m = r.model
        assert (m.archi, m.resolution, m.ae_dims, m.e_dims, m.d_dims, m.d_mask_dims) == (
            d["archi"], d["resolution"], d["ae_dims"], d["e_dims"], d["d_dims"], d["d_mask_dims"]), key
        assert (r.train.batch_size, r.optim.name) == (d["batch"], d["optimizer"].lower()), key
        assert r.loss.masked_training and r.data.random_warp, key
    assert common.CONFIGS["df-ud"].group == "train step df-ud res128 256/64/64/22 b4 rmsprop"
    with pytest.raises(KeyError, match="unknown variant"):
        common.load_recipe(TINY, "eager-fp64", run_dir=tmp_path)


def test_result_row_ratios_and_table():
    cfg = common.CONFIGS["df-ud"]
    d = cfg.dfl
    # half DFL's time and CPU, 2 GFLOP per step: ratios 2.0, GFLOP/s = 2 / t
    row = common.result_row(cfg, "eager-bf16", wall_s=d["median_s"] / 2, cpu_s=d["median_process_cpu_s"] / 2,
                            flops=2_000_000_000, load_before=(1.0, 1.0, 1.0), load_after=(1.5, 1.0, 1.0), threads=2,
                            others_s=0.01, quiet_n=2, quiet_s=d["median_s"] / 4, rounds=3)
    assert row["vs_dfl_wall"] == pytest.approx(2.0) and row["vs_dfl_cpu"] == pytest.approx(2.0)
    assert row["vs_dfl_quiet"] == pytest.approx(4.0)
    assert row["gflops"] == pytest.approx(2.0 / (d["median_s"] / 2))
    assert row["gflops_cpu_threads"] == pytest.approx(2.0 * 2 / (d["median_process_cpu_s"] / 2))
    text = common.format_table([row])
    line = next(ln for ln in text.splitlines() if "eager-bf16" in ln)
    assert re.search(r"\s2\.00x.*\s4\.00x.*\s2\.00x", line) and "1.00→1.50" in line
    noisy = common.result_row(cfg, "eager-fp32", wall_s=1.0, cpu_s=1.0, flops=1, load_before=None,
                              load_after=None, threads=1, others_s=0.9, quiet_n=0, quiet_s=None, rounds=3)
    assert noisy["vs_dfl_quiet"] is None
    assert re.search(r"eager-fp32.*x\s+-\s+-\s", common.format_table([noisy]))
    assert any("DFL (TF)" in ln and f"{d['median_s']:.3f}" in ln for ln in text.splitlines())
    conv = common.conv_row("bf16", flops=4_000_000_000, wall_s=0.5, cpu_s=1.0, threads=2, load=(3.0, 2.0, 1.0))
    assert conv["gflops"] == pytest.approx(8.0) and conv["gflops_cpu_threads"] == pytest.approx(8.0)
    assert "bf16" in common.format_conv_table([conv]) and common.format_table([]) == ""


def _ev(name, parent=None):
    return types.SimpleNamespace(name=name, cpu_parent=parent)


def test_profile_categories_follow_the_enclosing_region():
    opt = _ev("Optimizer.step#RMSprop.step")
    assert categorize(_ev("aten::mul", _ev("aten::_foreach_mul_", opt))) == "optimizer"
    assert categorize(_ev("aten::mul")) == "loss / other elementwise"
    bwd = _ev("aten::convolution_backward", _ev("autograd::engine::evaluate_function: ConvolutionBackward0"))
    assert categorize(_ev("aten::fill_", bwd)) == "conv backward"
    assert categorize(_ev("aten::copy_", _ev("aten::clone", _ev("aten::contiguous", bwd)))) == "layout"
    assert categorize(_ev("aten::mkldnn_convolution", _ev("aten::convolution"))) == "conv forward"
    assert categorize(_ev("aten::copy_", _ev("aten::_to_copy", _ev("aten::to")))) == "casts"


def test_compare_amp_script_writes_curves_and_plot(tmp_path):
    import importlib.util
    import json

    import cv2

    path = common.ROOT / "scripts" / "compare_amp.py"
    spec = importlib.util.spec_from_file_location("compare_amp", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "out"
    rc = mod.main(["--steps", "3", "--tail", "2", "--data", "synthetic", "--faces", "4", "--ae", "32", "--e", "8",
                   "--d", "8", "--dm", "8", "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "compare_amp.json").read_text())
    assert doc["steps"] == 3 and doc["skipped_steps"] == {"fp32": 0, "bf16": 0}
    for run in ("fp32", "bf16"):
        assert all(len(doc["curves"][run][k]) == 3 for k in mod.CURVES)
    # identical start (same seed, same batch): the first step's losses differ only by bf16 rounding
    s32, s16 = doc["curves"]["fp32"]["src_loss"][0], doc["curves"]["bf16"]["src_loss"][0]
    assert s32 > 0 and abs(s16 / s32 - 1) < 0.02
    tail = doc["final_tail_mean"]
    assert doc["final_ratio_bf16_over_fp32"]["dst_loss"] == pytest.approx(
        tail["bf16"]["dst_loss"] / tail["fp32"]["dst_loss"])
    img = cv2.imread(str(out / "compare_amp.png"))
    assert img is not None and img.shape[1] == 1280
