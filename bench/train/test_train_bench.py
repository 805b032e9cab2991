"""SAEHD training-step speed on CPU against DFL's recorded speed (bench suite "train").

Figures (one group each): DFL's two recorded configurations (bench/train/dfl_recorded.json):
  train step df-ud res128 256/64/64/22 b4 rmsprop     DFL 2.138 s/step
  train step liae-ud res128 256/64/64/22 b4 adabelief DFL 2.987 s/step
Providers:
  reference      DFL's recorded median s/step, replayed as a constant-time pseudo-benchmark (time.sleep of
                 the recorded median), so the harness's "vs reference" column reads "ours vs DFL"
  eager-fp32     Trainer with [train].amp = "off", [compile].mode = "off"
  eager-bf16     amp = "bf16" (autocast; DSSIM and the optimizer stay fp32)
  eager-bf16-cl  amp = "bf16", [compile].channels_last = true (NHWC weights and activations)
  compile-fp32   [compile].mode = "default" (torch.compile of model.forward_train, as the trainer does)
  compile-bf16   both
One item = one training step (items/s = steps/s). Every step is the real `Trainer.train_one` (SAEHDStep:
forward_train → saehd_losses with the fast DSSIM path → backward → NaN guard → DFL RMSprop/AdaBelief)
on a fixed synthetic batch (the loader is suite "data"), after checking that the model has exactly
DFL's trainable parameter count. extra_info also carries the process CPU time per step, the CPU time
other processes used meanwhile and the median of the "quiet" steps (others < 10% of the wall time, DFL's
criterion for its recording), the FLOPs of one forward+backward (FlopCounterMode: convs + matmuls) and
GFLOP/s, the thread count, OMP_WAIT_POLICY and the load average before/after; the run ends with an
ours-vs-DFL table of all of it (bench/train/conftest.py).

Plus "conv2d fwd 256→256 3x3 32x32 b8": one plain convolution, fp32 (reference) / bf16, NCHW /
channels_last — the machine's practical convolution peak, for context.

Knobs (environment): TORCHSAE_BENCH_TRAIN_ROUNDS (timed steps per figure, default 3),
TORCHSAE_BENCH_TRAIN_THREADS (torch.set_num_threads, default torch's choice). Runtime on the 2-core dev
box: about 5 min quiet with inductor's cache warm; cold, each of the four compiled figures adds 1-3 min.
Results and analysis: docs/train_perf.md.
"""

from __future__ import annotations

import gc
import os
import time

import pytest
import torch

from bench.train.common import (CONFIGS, CONV_RESULTS, RESULTS, VARIANTS, CallTimer, conv_flops, conv_row, load_avg,
                                load_recipe, make_trainer, result_row, step_flops, synthetic_batch, trainable_params)

ROUNDS = int(os.environ.get("TORCHSAE_BENCH_TRAIN_ROUNDS", "3"))


@pytest.mark.parametrize("config", list(CONFIGS))
def test_dfl_recorded_step(benchmark, tag, config):
    cfg = CONFIGS[config]
    d = cfg.dfl
    tag(cfg.group, "reference", items=1, source=d["file"], dfl_cpu_s=d["median_process_cpu_s"],
        note="DFL's recorded median replayed with time.sleep")
    benchmark.pedantic(time.sleep, args=(d["median_s"],), rounds=3, iterations=1, warmup_rounds=0)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_train_step(benchmark, tag, tmp_path, config, variant):
    cfg = CONFIGS[config]
    v = VARIANTS[variant]
    load_before = load_avg()
    r = load_recipe(cfg, variant, run_dir=tmp_path / "run")
    with make_trainer(r) as t:
        n_train = trainable_params(t.model)
        assert n_train == cfg.dfl["trainable_params"], (
            f"{cfg.recipe}: {n_train} trainable parameters, DFL's recorded model has {cfg.dfl['trainable_params']}: "
            "the comparison would not be like for like")
        batch = synthetic_batch(r.train.batch_size, r.model.resolution)
        flops = step_flops(t, batch)
        timer = CallTimer(lambda: t.train_one(batch))
        bm = tag(cfg.group, variant, items=1)
        bm.pedantic(timer, rounds=ROUNDS, iterations=1, warmup_rounds=v.warmup)
        assert t.skipped == 0 and t.step == ROUNDS + v.warmup, "a benchmarked step was skipped (non-finite)"
        wall, cpu = timer.medians(ROUNDS)
        quiet_n, quiet_s, others = timer.quiet(ROUNDS)
        row = result_row(cfg, variant, wall_s=wall, cpu_s=cpu, flops=flops, load_before=load_before,
                         load_after=load_avg(), threads=torch.get_num_threads(), others_s=others, quiet_n=quiet_n,
                         quiet_s=quiet_s, rounds=ROUNDS)
        RESULTS.append(row)
        bm.extra_info.update(
            amp=v.amp, compile=v.compile, channels_last=v.channels_last, cpu_s=cpu, gflop=row["gflop"],
            gflops=row["gflops"], vs_dfl_wall=row["vs_dfl_wall"], vs_dfl_cpu=row["vs_dfl_cpu"], threads=row["threads"],
            omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), load_before=load_before, load_after=row["load_after"],
            trainable_params=n_train, others_cpu_s=others, quiet_steps=quiet_n, quiet_median_s=quiet_s,
            first_call_s=timer.wall[0])
    del t, timer  # the model's memory before the next figure
    if v.compile != "off":
        torch._dynamo.reset()  # drop this model's compiled graphs before the next figure
    gc.collect()


CONV_PROVIDERS = {"reference": (torch.float32, False), "bf16": (torch.bfloat16, False),
                  "fp32-channels_last": (torch.float32, True), "bf16-channels_last": (torch.bfloat16, True)}


@pytest.mark.parametrize("provider", list(CONV_PROVIDERS))
def test_conv_peak(benchmark, tag, provider):
    import torch.nn.functional as F

    dtype, cl = CONV_PROVIDERS[provider]
    n, ch, hw = 8, 256, 32
    x = torch.randn(n, ch, hw, hw).to(dtype)
    w = (torch.randn(ch, ch, 3, 3) * 0.05).to(dtype)
    if cl:
        x, w = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
    timer = CallTimer(lambda: F.conv2d(x, w, padding=1))
    bm = tag(f"conv2d fwd {ch}→{ch} 3x3 {hw}x{hw} b{n}", provider, items=n)
    bm(timer)
    wall, cpu = timer.medians()
    row = conv_row(provider, flops=conv_flops(n, ch, ch, hw, hw, 3), wall_s=wall, cpu_s=cpu,
                   threads=torch.get_num_threads(), load=load_avg())
    CONV_RESULTS.append(row)
    bm.extra_info.update(gflops=row["gflops"], gflops_cpu_threads=row["gflops_cpu_threads"], threads=row["threads"],
                         load=row["load"], dtype=str(dtype), channels_last=cl)
