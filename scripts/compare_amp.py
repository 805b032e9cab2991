#!/usr/bin/env python3
"""Train one small but real SAEHD model in fp32 and in bf16 autocast, side by side, and compare the losses.

    .venv/bin/python scripts/compare_amp.py [--steps 300] [--out docs/compare_amp] [--data auto|demo|synthetic]

Model: df-ud, res 64, ae 64 / e 16 / d 16 / dm 16, batch 4, DFL RMSprop (lr 5e-5), SAEHD loss with DFL's
defaults (masked training, DSSIM + MSE), random warp on. Data: the demo workspace (workspace/demo,
`make data`) when present, else a synthetic faceset (tests/synthetic_faces.py).

Both runs are built with the same seed, so they start from identical weights (checked), and they are
stepped in lockstep on the *same* batches (one loader feeds both), so the only difference is the
autocast dtype: convolutions, matmuls and activations in bf16; DSSIM, the loss sums, the weights and the
optimizer in fp32 (engine.train.step). Per step it records src_loss, dst_loss, G_loss, grad_norm and the
step time of each run, and writes:
  <out>/compare_amp.json   the config, both loss curves, final-loss figures and ratios, timings, machine
  <out>/compare_amp.png    src and dst loss of both runs (per step and moving average) and the relative
                           gap of the moving averages, cv2-drawn (`--replot <json>` redraws it)
Final loss is compared as the mean over the last `--tail` steps (single steps are noisy: every batch is
different), as bf16 / fp32 ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import machine  # noqa: E402
from engine import recipe as recipe_mod  # noqa: E402
from engine.errors import DataError  # noqa: E402
from engine.train.build import build_trainer  # noqa: E402
from engine.train.device import process_settings  # noqa: E402
from engine.train.trainer import Trainer  # noqa: E402

DEMO = ROOT / "workspace" / "demo"
CURVES = ("src_loss", "dst_loss", "G_loss", "grad_norm")
COLORS = {"fp32": (200, 120, 30), "bf16": (40, 40, 220)}  # BGR: blue-ish fp32, red bf16


def model_overrides(a: argparse.Namespace) -> list[str]:
    return ["model.archi='df-ud'", f"model.resolution={a.res}", "model.face_type='wf'", f"model.ae_dims={a.ae}",
            f"model.e_dims={a.e}", f"model.d_dims={a.d}", f"model.d_mask_dims={a.dm}", "optim.name='rmsprop'",
            f"train.batch_size={a.batch}", f"train.seed={a.seed}", "train.device='cpu'", "compile.mode='off'",
            "train.target_iter=0", f"data.workers={a.workers}"]


def facesets(kind: str, tmp: Path, n_synthetic: int = 48) -> tuple[Path, Path, str]:
    """(src, dst, description). kind: demo | synthetic | auto (demo if present); synthetic: n faces each."""
    src, dst = DEMO / "data_src" / "aligned", DEMO / "data_dst" / "aligned"
    have_demo = src.is_dir() and dst.is_dir() and any(src.glob("*.jpg")) and any(dst.glob("*.jpg"))
    if kind == "demo" and not have_demo:
        raise DataError(f"--data demo: no aligned faces in {src} and {dst} (run `make data`, or use "
                        "--data synthetic / auto)")
    if kind in ("demo", "auto") and have_demo:
        n_src, n_dst = len(list(src.glob("*.jpg"))), len(list(dst.glob("*.jpg")))
        return src, dst, f"demo workspace ({n_src} src / {n_dst} dst faces)"
    from tests.synthetic_faces import write_synthetic_faceset

    write_synthetic_faceset(tmp / "src", n_synthetic, size=256, face_type="wf", seed=1, xseg_every=4)
    write_synthetic_faceset(tmp / "dst", n_synthetic, size=256, face_type="wf", seed=2)
    return (tmp / "src", tmp / "dst",
            f"synthetic faceset ({n_synthetic} src / {n_synthetic} dst, 256 px, tests/synthetic_faces.py)")


def build(a: argparse.Namespace, src: Path, dst: Path, amp: str, run_dir: Path) -> Trainer:
    # df128.toml is DFL's default SAEHD configuration (loss, data options); the model is resized here
    base = ROOT / "recipes" / "df128.toml"
    r = recipe_mod.load(base, [*model_overrides(a), f"data.src='{src}'", f"data.dst='{dst}'", f"train.amp='{amp}'",
                               f"train.run_dir='{run_dir}'"])
    return build_trainer(r)


def moving_average(x: np.ndarray, k: int) -> np.ndarray:
    """Trailing mean over up to k steps (same length as x)."""
    c = np.cumsum(np.insert(x.astype(np.float64), 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(0, idx - k)
    return (c[idx] - c[lo]) / (idx - lo)


def _panel(img, x0, y0, w, h, series: dict[str, np.ndarray], title: str, fmt: str, widths: dict[str, int],
           zero_line: bool = False) -> None:
    """One plot: a frame, 5 y ticks, 6 x ticks (1-based steps), each series as a polyline."""
    import cv2

    allv = np.concatenate(list(series.values()))
    lo, hi = float(np.percentile(allv, 0.5)), float(np.percentile(allv, 99.5))
    if zero_line:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi <= lo:
        hi = lo + 1e-6
    n = max(len(v) for v in series.values())

    def pt(i, v):
        return (int(x0 + w * i / max(1, n - 1)), int(y0 + h - h * (min(max(v, lo), hi) - lo) / (hi - lo)))

    cv2.rectangle(img, (x0, y0), (x0 + w, y0 + h), (0, 0, 0), 1)
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        y = pt(0, v)[1]
        cv2.line(img, (x0 - 4, y), (x0 + w, y), (225, 225, 225), 1)
        cv2.putText(img, fmt.format(v), (x0 - 66, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
    if zero_line:
        cv2.line(img, pt(0, 0.0), pt(n - 1, 0.0), (120, 120, 120), 1)
    for k in range(6):
        i = int(round((n - 1) * k / 5))
        cv2.putText(img, str(i + 1), (pt(i, lo)[0] - 10, y0 + h + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (60, 60, 60),
                    1, cv2.LINE_AA)
    cv2.putText(img, title, (x0, y0 - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for name, v in series.items():
        color = COLORS.get(name.split()[0], (0, 0, 0))
        if name.endswith("raw"):
            color = tuple(int(c + (255 - c) * 0.7) for c in color)
        pts = np.array([pt(i, x) for i, x in enumerate(v)], np.int32)
        cv2.polylines(img, [pts], False, color, widths.get(name, 1), cv2.LINE_AA)


def draw(curves: dict[str, dict[str, list[float]]], path: Path, title: str, smooth: int) -> None:
    """2×2 panels, cv2 only. Top: src_loss / dst_loss of both runs (per step: pale; `smooth`-step trailing
    mean: bold; bf16 drawn wide under a thin fp32 line so both stay visible where they coincide). Bottom:
    the relative gap of the trailing means, (bf16 / fp32 − 1) in %."""
    import cv2

    pw, ph, ml, mr, mt, mb = 640, 330, 76, 20, 34, 36
    img = np.full((60 + 2 * ph, 2 * pw, 3), 255, np.uint8)
    cv2.putText(img, title, (10, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for col, key in enumerate(("src_loss", "dst_loss")):
        x0, w, h = col * pw + ml, pw - ml - mr, ph - mt - mb
        raw = {run: np.asarray(c[key], np.float64) for run, c in curves.items()}
        sm = {run: moving_average(v, smooth) for run, v in raw.items()}
        top = {"bf16 raw": raw["bf16"], "fp32 raw": raw["fp32"], "bf16": sm["bf16"], "fp32": sm["fp32"]}
        _panel(img, x0, 40 + mt, w, h, top, f"{key}: per step (pale), {smooth}-step mean (bold)", "{:.3f}",
               {"bf16": 4, "fp32": 1})
        for j, run in enumerate(("fp32", "bf16")):
            ly = 40 + mt + 16 + 18 * j
            cv2.line(img, (x0 + w - 110, ly - 4), (x0 + w - 85, ly - 4), COLORS[run], 3)
            cv2.putText(img, run, (x0 + w - 78, ly), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        gap = {"bf16": 100.0 * (sm["bf16"] / sm["fp32"] - 1.0)}
        _panel(img, x0, 40 + ph + mt, w, h, gap, f"{key}: bf16 / fp32 - 1 of the {smooth}-step means, %", "{:+.2f}%",
               {"bf16": 2}, zero_line=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"compare_amp: could not write {path}")


def _title(doc: dict) -> str:
    m, r = doc["model"], doc["final_ratio_bf16_over_fp32"]
    return (f"df-ud res{m['resolution']} {m['ae_dims']}/{m['e_dims']}/{m['d_dims']}/{m['d_mask_dims']} b{m['batch']} "
            f"rmsprop, {doc['steps']} steps, same seed + batches | final ({doc['tail']}-step mean) bf16/fp32: "
            f"src {r['src_loss']:.4f}, dst {r['dst_loss']:.4f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "compare_amp")
    ap.add_argument("--data", choices=("auto", "demo", "synthetic"), default="auto")
    ap.add_argument("--faces", type=int, default=48, help="faces per side of the synthetic faceset")
    ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--ae", type=int, default=64)
    ap.add_argument("--e", type=int, default=16)
    ap.add_argument("--d", type=int, default=16)
    ap.add_argument("--dm", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=0, help="loader worker processes (0: in-process)")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--tail", type=int, default=50, help="steps averaged for the final-loss comparison")
    ap.add_argument("--smooth", type=int, default=20, help="moving-average window of the plot")
    ap.add_argument("--replot", type=Path, help="only redraw the PNG beside this compare_amp.json (no training)")
    a = ap.parse_args(argv)
    if a.replot is not None:
        doc = json.loads(a.replot.read_text())
        out = a.replot.with_suffix(".png")
        draw(doc["curves"], out, _title(doc), a.smooth)
        print(f"wrote {out}")
        return 0
    if a.steps < 2 or a.tail < 1:
        ap.error(f"--steps must be >= 2 and --tail >= 1, got {a.steps} and {a.tail}")
    tail = min(a.tail, a.steps)
    if a.threads:
        torch.set_num_threads(a.threads)

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        src, dst, data_desc = facesets(a.data, tmp, a.faces)
        runs = {"fp32": build(a, src, dst, "off", tmp / "fp32"), "bf16": build(a, src, dst, "bf16", tmp / "bf16")}
        sd32, sd16 = runs["fp32"].model.state_dict(), runs["bf16"].model.state_dict()
        if not all(torch.equal(sd32[k], sd16[k]) for k in sd32):
            raise RuntimeError("compare_amp: the two runs did not start from identical weights")
        loader_owner = runs["fp32"]
        loader_owner.make_loader()
        it = iter(loader_owner.loader)
        curves = {run: {k: [] for k in CURVES} for run in runs}
        times = {run: [] for run in runs}
        t_start = time.perf_counter()
        try:
            with process_settings(runs["fp32"].recipe.train):  # threads, flush-to-zero, as a run
                for step in range(a.steps):
                    batch = {k: v for k, v in next(it).items() if torch.is_tensor(v)}
                    for run, t in runs.items():
                        t.apply_schedules()
                        t0 = time.perf_counter()
                        losses = t.train_one(batch)
                        times[run].append(time.perf_counter() - t0)
                        for k in CURVES:
                            curves[run][k].append(round(float(losses[k]), 7))  # 7 decimals: ~1e-7 of a loss ~1
                    if (step + 1) % 50 == 0 or step + 1 == a.steps:
                        print(f"step {step + 1}/{a.steps}: " + "  ".join(
                            f"{run} src {curves[run]['src_loss'][-1]:.4f} dst {curves[run]['dst_loss'][-1]:.4f}"
                            for run in runs) + f"  ({time.perf_counter() - t_start:.0f} s)", flush=True)
        finally:
            loader_owner.loader.close()
        skipped = {run: t.skipped for run, t in runs.items()}

    final = {run: {k: statistics.fmean(c[k][-tail:]) for k in ("src_loss", "dst_loss", "G_loss")}
             for run, c in curves.items()}
    first = {run: {k: statistics.fmean(c[k][:min(10, a.steps)]) for k in ("src_loss", "dst_loss", "G_loss")}
             for run, c in curves.items()}
    ratio = {k: final["bf16"][k] / final["fp32"][k] for k in ("src_loss", "dst_loss", "G_loss")}
    last_ratio = {k: curves["bf16"][k][-1] / curves["fp32"][k][-1] for k in ("src_loss", "dst_loss", "G_loss")}
    gap = {k: float(np.mean(np.abs(np.asarray(curves["bf16"][k]) - np.asarray(curves["fp32"][k]))
                            / np.asarray(curves["fp32"][k]))) for k in ("src_loss", "dst_loss")}
    doc = {
        "what": "fp32 vs bf16 autocast, same seed, same batches in lockstep (scripts/compare_amp.py)",
        "model": {"archi": "df-ud", "resolution": a.res, "ae_dims": a.ae, "e_dims": a.e, "d_dims": a.d,
                  "d_mask_dims": a.dm, "batch": a.batch, "optimizer": "rmsprop (DFL, lr 5e-5)", "seed": a.seed},
        "data": data_desc, "steps": a.steps, "tail": tail,
        "first10_mean": first, "final_tail_mean": final, "final_ratio_bf16_over_fp32": ratio,
        "last_step_ratio_bf16_over_fp32": last_ratio, "mean_rel_abs_gap_per_step": gap, "skipped_steps": skipped,
        "median_step_s": {run: statistics.median(v[min(3, len(v) - 1):]) for run, v in times.items()},
        "curves": curves,
        "machine": {"cpu": machine()["cpu"], "cores": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "load_avg_end": os.getloadavg() if hasattr(os, "getloadavg") else None},
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "compare_amp.json").write_text(json.dumps(doc, indent=1) + "\n")
    draw(curves, a.out / "compare_amp.png", _title(doc), a.smooth)
    print(json.dumps({k: doc[k] for k in ("final_tail_mean", "final_ratio_bf16_over_fp32",
                                          "last_step_ratio_bf16_over_fp32", "mean_rel_abs_gap_per_step",
                                          "median_step_s", "skipped_steps")}, indent=1))
    print(f"wrote {a.out / 'compare_amp.json'} and {a.out / 'compare_amp.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
