"""Helpers of bench suite "train": the benchmarked configurations, synthetic batches, FLOP counting,
per-call wall + CPU timing and the "ours vs DFL" / convolution-peak tables.

What is timed is one SAEHD generator step through the real trainer (`build_trainer(recipe)` →
`Trainer.train_one(batch)` = `SAEHDStep`: forward_train → saehd_losses (DSSIM fast path) →
G_loss.sum().backward() → NaN/inf guard → DFL RMSprop/AdaBelief update) on a fixed synthetic batch, which
is what DFL's recorded number times too (one `src_dst_train` session call on a fixed batch; the data
loader is benchmarked in suite "data").

DFL's speed (bench/train/dfl_recorded.json, copied from shared/golden/perf/ beside the checkout) was recorded on the
same 2-core CPU with nothing else running (load ~0.7). Besides wall time every measurement records the
process CPU time per step (all threads, user + sys) and the load average, because wall time on a shared
machine mostly measures the other processes: CPU seconds per step are the load-robust figure to compare
(DFL: 4.2 s/step for df-ud, 5.87 for liae-ud, i.e. both cores busy for the whole 2.14 / 2.99 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

ROOT = Path(__file__).resolve().parents[2]
DFL_RECORDED: dict[str, Any] = json.loads((Path(__file__).with_name("dfl_recorded.json")).read_text())


@attrs.frozen
class Variant:
    """How a benchmarked trainer runs: [train].amp, [compile].mode, [compile].channels_last."""

    amp: str
    compile: str
    channels_last: bool = False

    @property
    def overrides(self) -> tuple[str, ...]:
        return (f"train.amp='{self.amp}'", f"compile.mode='{self.compile}'",
                f"compile.channels_last={'true' if self.channels_last else 'false'}")

    @property
    def warmup(self) -> int:
        """Steps before timing: eager 1 (oneDNN primitive caches, optimizer state allocation); compiled 2
        (the first call compiles forward and backward, the second still pays one-off allocations)."""
        return 1 if self.compile == "off" else 2


VARIANTS: dict[str, Variant] = {
    "eager-fp32": Variant("off", "off"),
    "eager-bf16": Variant("bf16", "off"),
    # channels_last model weights (the recipe option): tracks the NHWC path, which oneDNN's AMX bf16 convs
    # prefer (see docs/train_perf.md: it pays off once depth_to_space keeps the format)
    "eager-bf16-cl": Variant("bf16", "off", channels_last=True),
    "compile-fp32": Variant("off", "default"),
    "compile-bf16": Variant("bf16", "default"),
}

# Results of this process's benchmarks, printed as the ours-vs-DFL and conv-peak tables at the end of the pytest run
# (bench/train/conftest.py: pytest_terminal_summary).
RESULTS: list[dict[str, Any]] = []
CONV_RESULTS: list[dict[str, Any]] = []


@attrs.frozen(kw_only=True)
class BenchConfig:
    """One benchmarked model: a shipped recipe plus overrides, matched to a DFL recording."""

    key: str  # key in dfl_recorded.json "configs"
    recipe: str  # path relative to the repository root
    overrides: tuple[str, ...] = ()

    @property
    def dfl(self) -> dict[str, Any]:
        return DFL_RECORDED["configs"][self.key]

    @property
    def group(self) -> str:
        d = self.dfl
        return (f"train step {d['archi']} res{d['resolution']} {d['ae_dims']}/{d['e_dims']}/{d['d_dims']}/"
                f"{d['d_mask_dims']} b{d['batch']} {d['optimizer'].lower()}")


CONFIGS: dict[str, BenchConfig] = {
    # recipes/df128.toml is exactly DFL's recorded df-ud configuration
    "df-ud": BenchConfig(key="df-ud", recipe="recipes/df128.toml"),
    # DFL's liae-ud recording used res 128 batch 4; liae256.toml has the same dims at 256 / batch 8
    "liae-ud": BenchConfig(key="liae-ud", recipe="recipes/liae256.toml",
                           overrides=("model.resolution=128", "train.batch_size=4")),
}


def load_recipe(cfg: BenchConfig, variant: str, *, run_dir: str | Path, extra: tuple[str, ...] = ()):
    """The recipe of `cfg` with `variant`'s amp/compile/channels_last settings, on CPU, run folder `run_dir`
    (never written by the benchmark: nothing is saved)."""
    from engine import recipe

    if variant not in VARIANTS:
        raise KeyError(f"unknown variant {variant!r} (valid: {', '.join(VARIANTS)})")
    return recipe.load(ROOT / cfg.recipe, [*cfg.overrides, *VARIANTS[variant].overrides, "train.device='cpu'",
                                           f"train.run_dir='{run_dir}'", *extra])


@contextlib.contextmanager
def make_trainer(r) -> Iterator:
    """`build_trainer(r)` with the step-0 schedules applied (lr, loss weights), ready for `train_one`, inside
    the process settings a training run uses (threads, flush-to-zero; engine.train.device.process_settings)."""
    from engine.train.build import build_trainer
    from engine.train.device import process_settings

    with process_settings(r.train):
        t = build_trainer(r)
        t.apply_schedules()
        yield t


def synthetic_batch(n: int, res: int, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """A training batch of the right shapes and ranges (engine.train.step.BATCH_KEYS): images uniform in
    [0, 1) (N, 3, R, R) float32; face masks (N, 1, R, R) binary with ~70% face; eyes/mouth masks ~20%."""
    g = torch.Generator().manual_seed(seed)
    b = {}
    for side in ("src", "dst"):
        b[f"warped_{side}"] = torch.rand(n, 3, res, res, generator=g)
        b[f"target_{side}"] = torch.rand(n, 3, res, res, generator=g)
        b[f"target_{side}m"] = (torch.rand(n, 1, res, res, generator=g) > 0.3).float()
        b[f"target_{side}m_em"] = (torch.rand(n, 1, res, res, generator=g) > 0.8).float()
    return b


def trainable_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def step_flops(trainer, batch: Mapping[str, torch.Tensor]) -> int:
    """FLOPs of one generator step's forward + backward (torch.utils.flop_counter.FlopCounterMode).

    Counts what FlopCounterMode has formulas for: convolutions (forward, grad input where the input
    requires grad, grad weight) and matmuls (dense layers) of the model, plus the loss's two depthwise
    mask blurs (no grad); elementwise ops, the fast DSSIM kernel (an opaque custom op) and the optimizer
    add none. The same sequence as SAEHDStep's generator part (forward_train → saehd_losses → G_loss.sum()
    .backward()), run eagerly in fp32 (the count does not depend on amp or compile) through the class's
    forward_train, so a compiled trainer is counted too. Gradients are cleared afterwards; weights are
    untouched.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from engine.losses.saehd import prepare_targets, saehd_losses

    model = trainer.model
    spec, rt = trainer.step_fn.loss, trainer.step_fn.runtime
    eager_forward = type(model).forward_train.__get__(model)  # bypasses an instance-level torch.compile
    model.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:
        outs = eager_forward(batch["warped_src"], batch["warped_dst"])
        terms = saehd_losses(outs, batch, spec, rt, targets=prepare_targets(batch, spec, rt))
        terms["G_loss"].sum().backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def conv_flops(n: int, c_in: int, c_out: int, h_out: int, w_out: int, k: int) -> int:
    """Multiply-adds ×2 of a dense k×k convolution: 2·N·C_out·H_out·W_out·C_in·k²."""
    return 2 * n * c_out * h_out * w_out * c_in * k * k


def busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat: user + nice + system + irq +
    softirq + steal, all cores); None where /proc/stat is unavailable."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    v = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


class CallTimer:
    """Wraps `fn`; every call appends its wall time (perf_counter), this process's CPU time (all threads,
    time.process_time) and the CPU time *other* processes used meanwhile (machine busy time from
    /proc/stat minus ours; NaN without /proc) to `wall` / `cpu` / `others`.

    A call is *quiet* when the others used less than 10% of its wall time — DFL's own criterion for its
    recorded "quiet" iterations (golden/perf), so quiet medians compare like for like."""

    QUIET_FRACTION = 0.1

    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.others: list[float] = []

    def __call__(self) -> Any:
        b0, c0, t0 = busy_cpu_s(), time.process_time(), time.perf_counter()
        out = self.fn()
        wall, cpu, b1 = time.perf_counter() - t0, time.process_time() - c0, busy_cpu_s()
        self.wall.append(wall)
        self.cpu.append(cpu)
        # /proc/stat ticks at 1/CLK_TCK (10 ms): clamp the rounding below zero
        self.others.append(max(0.0, b1 - b0 - cpu) if b0 is not None and b1 is not None else float("nan"))
        return out

    def medians(self, last: int | None = None) -> tuple[float, float]:
        """(median wall, median CPU) over the last `last` calls (all by default)."""
        w = self.wall[-last:] if last else self.wall
        c = self.cpu[-last:] if last else self.cpu
        if not w:
            raise ValueError("CallTimer: no calls recorded")
        return statistics.median(w), statistics.median(c)

    def quiet(self, last: int | None = None) -> tuple[int, float | None, float]:
        """(number of quiet calls, their median wall time or None, median others' CPU s per call) over the
        last `last` calls."""
        w = self.wall[-last:] if last else self.wall
        o = self.others[-last:] if last else self.others
        if not w:
            raise ValueError("CallTimer: no calls recorded")
        q = [wi for wi, oi in zip(w, o) if oi < self.QUIET_FRACTION * wi]
        return len(q), (statistics.median(q) if q else None), statistics.median(o)


def load_avg() -> tuple[float, float, float] | None:
    return tuple(round(x, 2) for x in os.getloadavg()) if hasattr(os, "getloadavg") else None


def conv_row(provider: str, *, flops: int, wall_s: float, cpu_s: float, threads: int, load) -> dict[str, Any]:
    """One row of the convolution-peak table: GFLOP/s by wall time, and by CPU time × threads (what the
    threads would reach on otherwise idle cores: robust to other load, optimistic about thread scaling)."""
    gflop = flops / 1e9
    return {"provider": provider, "gflop": gflop, "median_s": wall_s, "cpu_s": cpu_s, "gflops": gflop / wall_s,
            "gflops_cpu_threads": gflop * threads / cpu_s if cpu_s > 0 else float("nan"), "threads": threads,
            "load": load}


def result_row(cfg: BenchConfig, variant: str, *, wall_s: float, cpu_s: float, flops: int,
               load_before, load_after, threads: int, others_s: float = float("nan"), quiet_n: int = 0,
               quiet_s: float | None = None, rounds: int = 0) -> dict[str, Any]:
    """One row of the ours-vs-DFL table. vs_dfl_* > 1 means faster than DFL (DFL time / our time).
    others_s: median CPU s other processes used per step; quiet_n of `rounds` steps were quiet, with
    median wall quiet_s (None if none was)."""
    d = cfg.dfl
    return {
        "others_s": others_s, "quiet_n": quiet_n, "quiet_s": quiet_s, "rounds": rounds,
        "vs_dfl_quiet": d["median_s"] / quiet_s if quiet_s else None,
        "config": cfg.key, "group": cfg.group, "variant": variant, "median_s": wall_s, "cpu_s": cpu_s,
        "steps_per_s": 1.0 / wall_s, "gflop": flops / 1e9, "gflops": flops / 1e9 / wall_s,
        "gflops_cpu_threads": flops / 1e9 * threads / cpu_s if cpu_s > 0 else float("nan"),
        "vs_dfl_wall": d["median_s"] / wall_s, "vs_dfl_cpu": d["median_process_cpu_s"] / cpu_s,
        "dfl_median_s": d["median_s"], "dfl_cpu_s": d["median_process_cpu_s"],
        "dfl_gflops": flops / 1e9 / d["median_s"], "threads": threads,
        "load_before": load_before, "load_after": load_after,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """The ours-vs-DFL table (one line per benchmarked variant, DFL's recorded figures per config)."""
    if not rows:
        return ""
    lines = ["train suite: ours vs DFL's recorded step (DFL: same CPU, quiet, load ~0.7; ratios > 1 = we are faster)",
             f"  {'config':<9}{'variant':<14}{'s/step':>8}{'vs DFL':>8}{'quiet s':>9}{'vs DFL':>8}{'CPU s':>7}"
             f"{'vs DFL':>8}{'GFLOP/s':>9}{'thr':>4}{'others':>8}  load 1-min"]
    seen = set()
    for r in rows:
        if r["config"] not in seen:
            seen.add(r["config"])
            lines.append(f"  {r['config']:<9}{'DFL (TF)':<14}{r['dfl_median_s']:8.3f}{1.0:7.2f}x"
                         f"{r['dfl_median_s']:9.3f}{1.0:7.2f}x{r['dfl_cpu_s']:7.2f}{1.0:7.2f}x{r['dfl_gflops']:9.1f}"
                         f"{2:4d}{'~0':>8}  (recorded)")
        lb = r["load_before"][0] if r["load_before"] else float("nan")
        la = r["load_after"][0] if r["load_after"] else float("nan")
        if r["quiet_s"]:
            quiet = f"{r['quiet_s']:9.3f}{r['vs_dfl_quiet']:7.2f}x"
        else:
            quiet = f"{'-':>9}{'-':>8}"
        lines.append(f"  {r['config']:<9}{r['variant']:<14}{r['median_s']:8.3f}{r['vs_dfl_wall']:7.2f}x{quiet}"
                     f"{r['cpu_s']:7.2f}{r['vs_dfl_cpu']:7.2f}x{r['gflops']:9.1f}{r['threads']:4d}"
                     f"{r['others_s']:8.2f}  {lb:.2f}→{la:.2f}")
    lines.append("  s/step, GFLOP/s: wall-clock medians. quiet s: median over the steps during which other processes "
                 "used < 10% of the wall time (DFL's criterion; '-': none was quiet). CPU s: this process's CPU time "
                 "per step (all threads). others: CPU s per step used by other processes meanwhile. GFLOP/s counts "
                 "convolutions + matmuls (FlopCounterMode).")
    return "\n".join(lines)


def format_conv_table(rows: list[dict[str, Any]]) -> str:
    """The convolution-peak table."""
    if not rows:
        return ""
    lines = ["conv2d peak (forward, one call): GFLOP/s by wall time | by CPU time × threads (load-robust)"]
    for r in rows:
        load = r["load"][0] if r["load"] else float("nan")
        lines.append(f"  {r['provider']:<20}{r['gflops']:9.1f}{r['gflops_cpu_threads']:11.1f}   threads {r['threads']}"
                     f"  load {load:.2f}")
    return "\n".join(lines)
