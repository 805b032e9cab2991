"""Where one SAEHD training step spends its time, by category (torch.profiler).

    python -m bench.train.profile_step --config df-ud --variant eager-fp32 [--threads 1] [--steps 2]

Runs the benchmarked step (bench/train/common.py: real Trainer + SAEHDStep on a synthetic batch) once
or twice to warm up, then profiles `--steps` steps and attributes every profiled op's *self* time to one
category, from the innermost enclosing region that names one (so a multiply inside the optimizer counts
as "optimizer", one inside a convolution's backward as "conv backward"):

    conv forward / conv backward, dense (mm), dssim (fast C kernel fwd + bwd), optimizer (the DFL update),
    nan guard (the trainer's isfinite check of every gradient), grad norm, activations (leaky ReLU,
    sigmoid, tanh, fwd + bwd), layout (depth-to-space permutes, cat, clone, contiguous copies),
    casts (autocast dtype conversions), loss elementwise (everything else in forward/backward).

Prints the table (seconds per step, share) plus the step's wall and process CPU time. With other
processes on the machine the profiler's (wall-clock) op times are inflated about uniformly; the shares
are what to read. --threads 1 gives the cleanest attribution on a loaded machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import defaultdict

import torch

from bench.train.common import CONFIGS, VARIANTS, CallTimer, load_avg, load_recipe, make_trainer, synthetic_batch

# (substring of an enclosing region's name, category); checked from the op itself outwards, first hit wins
REGION_RULES: tuple[tuple[str, str], ...] = (
    ("Optimizer.step", "optimizer"),
    ("aten::isfinite", "nan guard"),
    ("dssim", "dssim"),
    ("convolution_backward", "conv backward"),
    ("ConvolutionBackward", "conv backward"),
    ("mkldnn_convolution", "conv forward"),
    ("aten::convolution", "conv forward"),
    ("_foreach_norm", "grad norm"),
    ("linalg_vector_norm", "grad norm"),
    ("aten::mm", "dense (mm)"),
    ("aten::addmm", "dense (mm)"),
    ("MmBackward", "dense (mm)"),
    ("AddmmBackward", "dense (mm)"),
    ("leaky_relu", "activations"),
    ("LeakyRelu", "activations"),
    ("sigmoid", "activations"),
    ("Sigmoid", "activations"),
    ("tanh", "activations"),
    ("Tanh", "activations"),
    ("PermuteBackward", "layout"),
    ("CloneBackward", "layout"),
    ("CatBackward", "layout"),
    ("aten::cat", "layout"),
    ("aten::clone", "layout"),
    ("aten::contiguous", "layout"),
    ("aten::_to_copy", "casts"),
    ("ToCopyBackward", "casts"),
)


def categorize(event) -> str:
    """Category of a profiler FunctionEvent from itself and its enclosing regions (cpu_parent chain)."""
    e = event
    while e is not None:
        for needle, cat in REGION_RULES:
            if needle in e.name:
                return cat
        e = e.cpu_parent
    return "loss / other elementwise"


def breakdown(prof, steps: int) -> dict[str, float]:
    """Seconds per step by category: the sum of every event's self CPU time (profiler clock)."""
    out: dict[str, float] = defaultdict(float)
    for ev in prof.events():
        if ev.device_type != torch.autograd.DeviceType.CPU:
            continue
        out[categorize(ev)] += ev.self_cpu_time_total / 1e6 / steps
    return dict(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.train.profile_step", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=list(CONFIGS), default="df-ud")
    ap.add_argument("--variant", choices=list(VARIANTS), default="eager-fp32")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave torch's default)")
    ap.add_argument("--steps", type=int, default=1, help="profiled steps")
    ap.add_argument("--warmup", type=int, default=0, help="steps before profiling (default: 1 eager, 2 compiled)")
    ap.add_argument("--override", action="append", default=[],
                    help="extra recipe override, e.g. compile.channels_last=true")
    ap.add_argument("--top", type=int, default=0, help="also print the profiler's top-N ops by self time")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = CONFIGS[args.config]
    with tempfile.TemporaryDirectory() as tmp:
        r = load_recipe(cfg, args.variant, run_dir=os.path.join(tmp, "run"), extra=tuple(args.override))
        with make_trainer(r) as t:
            batch = synthetic_batch(r.train.batch_size, r.model.resolution)
            timer = CallTimer(lambda: t.train_one(batch))
            for _ in range(args.warmup or VARIANTS[args.variant].warmup):
                timer()
            from torch.profiler import ProfilerActivity, profile

            load0 = load_avg()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(args.steps):
                    timer()
            wall, cpu = timer.medians(args.steps)
            cats = breakdown(prof, args.steps)
    total = sum(cats.values())
    print(f"{cfg.group} | {args.variant} | threads {torch.get_num_threads()} | overrides {args.override or '-'}")
    print(f"step (profiled): wall {wall:.3f} s, process CPU {cpu:.3f} s | load {load0} -> {load_avg()}")
    print(f"  {'category':<26}{'s/step':>9}{'share':>8}")
    for name, sec in sorted(cats.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<26}{sec:9.3f}{sec / total:8.1%}")
    print(f"  {'total (profiler self time)':<26}{total:9.3f}")
    if args.top:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
