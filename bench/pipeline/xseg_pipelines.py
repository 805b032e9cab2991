"""XSeg's two augmentation pipelines on this machine, in one process (ratios survive a drifting load):

    python -m bench.pipeline.xseg_pipelines [--res 256] [--batch 4] [--base-ch 32] [--faces 24]
                                            [--rounds 12] [--steps 4] [--designs dfl:2,dfl:0,device:0] [--device cpu]

1. augmentation alone, one batch, alternating rounds, median ms/batch:
     dfl      engine.xseg.data.XSegBatches[plan]: decode-free (faces cached as floats first), numpy/OpenCV
              augmentation per sample, as a loader process runs it
     device   engine.xseg.device: the loader side (gather cached rows + draws) and XSegAugment on --device
2. the training loop per design `pipeline:workers` (XSegTrainer driven like engine.train.loop.run), blocks
   of --steps iterations after one warm-up, alternating designs: median loop s/step (wall, data included),
   the step's own median, loader wait %.
The faces: the first --faces demo faces (workspace/demo/data_src/aligned), labelled with their landmark
hull (what tests/xseg does), or synthetic 512² faces when the demo faces are absent. Prints the load
average before and after each figure. What `[xseg].pipeline = "auto"` picks on the CPU
(engine.xseg.data.CPU_PIPELINE) was decided with this tool (bench/README.md, "XSeg pipelines").
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from bench.pipeline.common import DEMO, load_avg
from engine import recipe
from engine.data.device import unpack
from engine.faces import dfljpg
from engine.xseg.data import XSegBatches, XSegPlanner
from engine.xseg.device import XSegAugment, XSegDeviceBatches
from engine.xseg.faces import scan
from engine.xseg.train import XSegTrainer


def labelled_faces(root: Path, n: int) -> tuple[Path, str]:
    src = DEMO / "data_src" / "aligned"
    files = sorted(src.glob("*.jpg"))[:n] if src.is_dir() else []
    out = root / "faces"
    out.mkdir(parents=True)
    if len(files) >= 2:
        for f in files:
            shutil.copy(f, out / f.name)
        label = "demo"
    else:
        from tests.synthetic_faces import write_synthetic_faceset

        write_synthetic_faceset(out, n, size=512, face_type="wf", seed=1)
        label = "synthetic"
    for p in sorted(out.glob("*.jpg")):  # include polygon: the hull of the jaw and brows (landmarks 0-26)
        lm = dfljpg.read(p)["landmarks"]
        hull = cv2.convexHull(np.asarray(lm[:27], np.float32)).reshape(-1, 2).astype(np.float32)
        dfljpg.update_meta(p, seg_ie_polys={"polys": [{"type": 1, "pts": hull}]})
    return out, label


def _median_ms(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def augment_figures(faces, res: int, batch: int, rounds: int, device: torch.device) -> None:
    planner = XSegPlanner(len(faces), batch, seed=0)
    plans = [planner.next_plan() for _ in range(rounds * 2 + 2)]
    dfl = XSegBatches(faces, resolution=res, face_type="wf")
    dev = XSegDeviceBatches(faces, resolution=res, face_type="wf")
    aug = XSegAugment(res)
    cache = {}
    real_load = dfl._load

    def cached_load(i, bad):  # the dfl loader re-decodes every face every time; time the augmentation only
        if i not in cache:
            cache[i] = real_load(i, bad)
        return cache[i]

    dfl._load = cached_load
    for p in plans:  # fill both caches
        dfl[p]
        dev[p]
    it = iter(plans)
    times = {"dfl": [], "device loader side": [], "device augment": []}
    print(f"load before: {load_avg()}")
    for _ in range(rounds):
        p = next(it)
        times["dfl"].append(_median_ms(lambda: dfl[p], 1))
        p = next(it)
        t0 = time.perf_counter()
        raw = dev[p]
        times["device loader side"].append(1000 * (time.perf_counter() - t0))
        moved = unpack(raw["packed"].to(device), raw["layout"])

        def run():
            aug(moved)
            if device.type == "cuda":
                torch.cuda.synchronize()

        times["device augment"].append(_median_ms(run, 1))
    print(f"load after: {load_avg()}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"  augment res {res} b{batch}: {k:20s} {v:8.1f} ms/batch (median of {rounds})")
    dev_total = med["device loader side"] + med["device augment"]
    print(f"  ratio dfl / device (loader side + augment): {med['dfl'] / dev_total:.2f}x  "
          f"(dfl / device augment alone {med['dfl'] / med['device augment']:.2f}x)")
    dev.close()


def loop_figures(faces_dir: Path, root: Path, res: int, batch: int, base_ch: int, steps: int, blocks: int,
                 designs: list[tuple[str, int]], device: torch.device) -> None:
    trainers = {}
    for pipe, workers in designs:
        text = (f'kind = "xseg"\n[xseg]\nfacesets = ["{faces_dir}"]\nresolution = {res}\nbase_ch = {base_ch}\n'
                f'workers = {workers}\npipeline = "{pipe}"\n[train]\nrun_dir = "{root / f"run_{pipe}_{workers}"}"\n'
                f'batch_size = {batch}\ndevice = "{device.type}"\n')
        t = XSegTrainer.create(recipe.loads(text, source="xseg_bench.toml"))
        t.make_loader()
        batches = iter(t.loader)
        t.train_one(t.next_batch(batches))  # warm-up (first batch: decodes; first step: allocator)
        t.clock.iteration_end()
        trainers[(pipe, workers)] = (t, batches, [], [])
    print(f"load before: {load_avg()}")
    try:
        for _ in range(blocks):
            for key, (t, batches, loops, steps_s) in trainers.items():
                for _ in range(steps):
                    t0 = time.perf_counter()
                    t.train_one(t.next_batch(batches))
                    loops.append(time.perf_counter() - t0)
                    steps_s.append(t.step_times[-1])
                    t.clock.iteration_end()
    finally:
        for t, *_ in trainers.values():
            t.loader.close()
    print(f"load after: {load_avg()}")
    base = None
    for (pipe, workers), (t, _b, loops, steps_s) in trainers.items():
        loop, step = statistics.median(loops), statistics.median(steps_s)
        base = base or loop
        print(f"  loop res {res} b{batch} base_ch {base_ch} {pipe}:{workers}: loop {loop:.3f} s/step, step {step:.3f} s, "
              f"loop/step {loop / step:.3f}, loader wait {t.clock.summary(0)['loader_wait_pct']:.1f}%, "
              f"vs first design {loop / base:.3f}x  ({len(loops)} steps)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--base-ch", type=int, default=32)
    ap.add_argument("--faces", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=12, help="augmentation rounds per provider")
    ap.add_argument("--steps", type=int, default=2, help="loop iterations per block and design")
    ap.add_argument("--blocks", type=int, default=2, help="alternating blocks per design")
    ap.add_argument("--designs", default="dfl:2,dfl:0,device:0", help="pipeline:workers, comma-separated")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-loop", action="store_true")
    a = ap.parse_args()
    dev = torch.device(a.device)
    print(f"torch threads {torch.get_num_threads()}, device {dev}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        faces_dir, label = labelled_faces(root, a.faces)
        print(f"faces: {label}, {len(list(faces_dir.glob('*.jpg')))}")
        augment_figures(scan(faces_dir), a.res, a.batch, a.rounds, dev)
        if not a.skip_loop:
            designs = [(d.split(":")[0], int(d.split(":")[1])) for d in a.designs.split(",")]
            loop_figures(faces_dir, root, a.res, a.batch, a.base_ch, a.steps, a.blocks, designs, dev)


if __name__ == "__main__":
    main()
