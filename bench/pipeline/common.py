"""Helpers of bench suite "pipeline": device, configurations, faces, trainers and the loop iteration.

The device is TORCHSAE_BENCH_DEVICE (`python -m bench --device cuda`, `make bench DEVICE=cuda`): auto =
CUDA when present. The faces are the demo faceset (workspace/demo, `make data`) when it is there,
otherwise a synthetic one (48 + 48 512² whole faces, tests/synthetic_faces.py);
extra_info says which.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from pathlib import Path

import attrs
import torch

from bench.train.common import ROOT, load_avg, synthetic_batch  # noqa: F401 - re-exported for the suite

DEMO = ROOT / "workspace" / "demo"


def bench_device() -> torch.device:
    want = os.environ.get("TORCHSAE_BENCH_DEVICE", "auto")
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench: --device cuda but CUDA is not available here")
    return torch.device(want)


DEVICE = bench_device()
ON_CUDA = DEVICE.type == "cuda"


@attrs.frozen
class Config:
    """A benchmarked training configuration: a shipped recipe at a batch size, bf16 autocast."""

    key: str
    recipe: str
    resolution: int
    batch: int
    cpu_rounds: int  # timed steps on CPU (the 256 b32 step takes ~20 s on the 2-core box)
    cuda_rounds: int = 30

    @property
    def rounds(self) -> int:
        env = os.environ.get("TORCHSAE_BENCH_PIPELINE_ROUNDS")
        if env:
            return int(env)
        return self.cuda_rounds if ON_CUDA else self.cpu_rounds


CONFIGS = {
    "df-ud-128-b4": Config("df-ud-128-b4", "recipes/df128.toml", 128, 4, cpu_rounds=8),
    "df-ud-256-b32": Config("df-ud-256-b32", "recipes/df256.toml", 256, 32, cpu_rounds=2, cuda_rounds=20),
}

# [compile].mode variants per device: CPU eager only (compile is slower than eager there, docs/train_perf.md)
VARIANTS = {"df-ud-128-b4": ("off", "default", "reduce-overhead") if ON_CUDA else ("off",),
            "df-ud-256-b32": ("off", "default") if ON_CUDA else ("off",)}


def faces(tmp_root: Path) -> tuple[str, str, str]:
    """(src, dst, label): the demo faces, or synthetic ones written under tmp_root."""
    src, dst = DEMO / "data_src" / "aligned", DEMO / "data_dst" / "aligned"
    if src.is_dir() and dst.is_dir() and any(src.glob("*.jpg")):
        return str(src), str(dst), "demo"
    from tests.synthetic_faces import write_synthetic_faceset

    s, d = tmp_root / "src", tmp_root / "dst"
    if not s.exists():
        write_synthetic_faceset(s, 48, size=512, face_type="wf", seed=1, xseg_every=4)
        write_synthetic_faceset(d, 48, size=512, face_type="wf", seed=2)
    return str(s), str(d), "synthetic"


def load_recipe(cfg: Config, src: str, dst: str, run_dir: Path, *, compile_mode: str = "off",
                pipeline: str = "auto", workers: str | int = "auto"):
    from engine import recipe

    w = f"'{workers}'" if isinstance(workers, str) else str(workers)
    return recipe.load(ROOT / cfg.recipe, [
        f"data.src='{src}'", f"data.dst='{dst}'", f"data.pipeline='{pipeline}'", f"data.workers={w}",
        f"train.batch_size={cfg.batch}", "train.amp='bf16'", f"compile.mode='{compile_mode}'",
        f"train.device='{DEVICE.type}'", f"train.run_dir='{run_dir}'", "train.save_every_minutes=0",
        "train.target_iter=0"])


_SETTINGS = contextlib.ExitStack()  # the run's process settings stay on for the benchmark process ...
atexit.register(_SETTINGS.close)  # ... and are undone before the interpreter tears torch down


def make_trainer(r):
    """build_trainer(r) inside the process settings of a training run (flush-to-zero, [train].threads),
    step-0 schedules applied."""
    from engine.train.build import build_trainer
    from engine.train.device import process_settings

    _SETTINGS.enter_context(process_settings(r.train))
    t = build_trainer(r)
    t.apply_schedules()
    return t


def sync() -> None:
    if ON_CUDA:
        torch.cuda.synchronize()


def fill_cache(loader) -> None:
    """Decode every face into the loader's model-resolution cache now (steady state: what every epoch
    after the first sees)."""
    batches = loader.batches
    bad: list = []
    for side in ("src", "dst"):
        fs, opts = (batches.src if side == "src" else batches.dst), batches.opts[side]
        for i in range(len(fs)):
            batches._cached(fs, i, opts, bad)
    if batches.opts["src"].ct_mode:
        for j in range(len(batches.dst)):
            batches._cached_ct(j, bad)


def loop_iteration(t, it) -> None:
    """One iteration of Trainer.run's loop body as timed there: schedules, wait for the batch, move it
    to the device, the step (which ends with a host sync of its losses)."""
    t.apply_schedules()
    batch = t.next_batch(it)  # timed by t.clock
    t.train_one(batch)
    t.clock.iteration_end()
