"""Loop vs fixed-batch step, several loader designs, measured in alternating blocks in one process.

    python -m bench.pipeline.loop_vs_step [--config df-ud-128-b4] [--blocks 3] [--steps 6] [--threads N]
        [--designs device:auto,device:1,fast:2] [--device cpu|cuda]

For each design (pipeline:workers) a loader is built on the same trainer and its cache filled (steady
state); then blocks of `--steps` fixed-batch steps and `--steps` loop iterations (Trainer.run's loop
body: wait for the batch, move it, step) alternate, each block's first iteration discarded, so slow
drifts of a shared machine's load hit all designs alike (the design order rotates from block to block). Prints per design: median s/iteration of the
loop and of the step in its blocks, their ratio, the loader wait share, the load average. This is how
the 2-core default (engine/data/auto.py) was chosen; the suite's `train` figures give the same ratio
for the default design only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.pipeline.common import CONFIGS, DEVICE, faces, fill_cache, load_recipe, loop_iteration, make_trainer, sync
from bench.train.common import synthetic_batch
from engine.data.train_loader import make_loader
from engine.train.loopstats import LoopClock


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pipeline.loop_vs_step", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="df-ud-128-b4", choices=list(CONFIGS))
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=0, help="torch threads ([train].threads; 0 = torch's default)")
    ap.add_argument("--designs", default="device:auto,device:1,fast:2")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="torchsae-loop-vs-step-") as tmp:
        return _run(args, Path(tmp))


def _run(args, tmp: Path) -> int:
    cfg = CONFIGS[args.config]
    src, dst, label = faces(tmp / "faces")
    r = load_recipe(cfg, src, dst, tmp / "run")
    if args.threads:
        torch.set_num_threads(args.threads)
    t = make_trainer(r)
    fixed = {k: v.to(DEVICE) for k, v in synthetic_batch(cfg.batch, cfg.resolution).items()}
    designs = []
    for d in args.designs.split(","):
        pipeline, workers = d.split(":")
        rd = load_recipe(cfg, src, dst, tmp / "run", pipeline=pipeline,
                         workers=workers if workers == "auto" else int(workers))
        loader = make_loader(rd, rank=0, world=1, device=t.device, random_warp=t.random_warp, pretrain=False)
        fill_cache(loader._loader)
        designs.append((d, loader, iter(loader), {"loop": [], "step": [], "wait": []}))
    for _ in range(2):  # warm-up: allocator, oneDNN primitives, optimizer state
        t.train_one(fixed)
    load0 = os.getloadavg()
    for b in range(args.blocks):
        for name, loader, it, res in designs[b % len(designs):] + designs[:b % len(designs)]:  # rotate the order
            t.clock = LoopClock()
            for i in range(args.steps + 1):
                loop_iteration(t, it)
                if i:
                    res["loop"].append(t.clock.loops[-1])
                    res["wait"].append(t.clock.waits[-1])
            for i in range(args.steps + 1):
                sync()
                a = time.perf_counter()
                t.train_one(fixed)  # ends with a host sync of its losses
                if i:
                    res["step"].append(time.perf_counter() - a)
    load1 = os.getloadavg()
    print(f"{args.config} bf16 on {DEVICE} ({label} faces), torch threads {torch.get_num_threads()}, "
          f"{args.blocks} blocks x {args.steps} steps, load {load0[0]:.2f} -> {load1[0]:.2f}")
    print(f"  {'design':<16}{'loop s':>9}{'step s':>9}{'loop/step':>11}{'wait %':>8}  resolved")
    for name, loader, _it, res in designs:
        lo, st = statistics.median(res["loop"]), statistics.median(res["step"])
        wait = 100 * sum(res["wait"]) / sum(res["loop"])
        print(f"  {name:<16}{lo:9.3f}{st:9.3f}{lo / st:10.3f}x{wait:7.1f}%  {loader.describe()}")
        loader.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
