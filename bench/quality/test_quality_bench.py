"""Swap quality of the quickstart recipe after a fixed number of steps (bench suite "quality").

`make bench SUITE=quality` trains recipes/quickstart.toml on the demo faces (`make data`) from seed 0 for
TORCHSAE_BENCH_QUALITY_STEPS steps (default 1000, what `make train` runs), once per variant, then scores
the final model with engine.eval on the run's held-out faces ([data].eval_fraction = 0.1 in the recipe:
47 src and 7 dst faces never trained on), every face, dlib's face detector on.

Figures: group "quality quickstart <steps> steps", one row per variant (provider):
  reference   [train].amp = "off" (fp32)
  bf16        [train].amp = "bf16" (autocast; DSSIM and the optimizer in fp32): the speed claims rest on
              its quality holding, so the two rows sit side by side
The timed call is the whole training run (one round: the median is that run's wall time, gated like every
other figure). extra_info["quality"] holds the evaluation's metrics and extra_info["quality_gate"] says,
per gated metric, which direction is better and how far it may move the wrong way before `python -m bench`
calls it a regression (bench/harness.py: quality_regressions) — so a change that makes training faster but
the swap worse fails the bench like a slowdown does.

Knobs: TORCHSAE_BENCH_QUALITY_STEPS, TORCHSAE_BENCH_QUALITY_VARIANTS (comma list, default "reference,bf16").
Runtime: about 7 min per variant on an idle 2-core CPU at 1000 steps, plus ~30 s of evaluation.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "workspace" / "demo"
STEPS = int(os.environ.get("TORCHSAE_BENCH_QUALITY_STEPS", "1000"))
VARIANTS = {"reference": "off", "bf16": "bf16"}
CHOSEN = [v.strip() for v in os.environ.get("TORCHSAE_BENCH_QUALITY_VARIANTS", "reference,bf16").split(",")
          if v.strip()]

# metric -> (better direction, how far it may move the wrong way vs the last stored run). Training on the CPU
# from a fixed seed repeats to rounding, so these bound real changes, not noise; identity figures move in
# steps of 1/7 (7 held-out dst faces), hence the loose retrieval bound.
GATE = {
    "identity_retrieval": ("higher", 0.15),
    "identity_margin": ("higher", 0.05),
    "landmark_nme": ("lower", 0.01),
    "yaw_error_deg": ("lower", 1.5),
    "recon_dssim_src": ("lower", 0.005),
    "recon_dssim_dst": ("lower", 0.005),
    "psnr_src": ("higher", 0.5),
    "psnr_dst": ("higher", 0.5),
}

pytestmark = pytest.mark.skipif(not (DEMO / "data_src" / "aligned").is_dir(),
                                reason="demo faces not extracted: run `make data` first")


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v in CHOSEN])
def test_quickstart_quality(benchmark, tag, tmp_path, variant):
    from engine import recipe
    from engine.eval.evaluate import Evaluator
    from engine.eval.faces import load_side
    from engine.eval.models import TorchEvalModel
    from engine.train.build import build_trainer
    from engine.train.device import process_settings
    from engine.train.loop import run

    src, dst = DEMO / "data_src" / "aligned", DEMO / "data_dst" / "aligned"
    r = recipe.load(ROOT / "recipes" / "quickstart.toml",
                    [f"data.src='{src}'", f"data.dst='{dst}'", f"train.run_dir='{tmp_path / 'run'}'",
                     f"train.amp='{VARIANTS[variant]}'", f"train.target_iter={STEPS}", "train.eval_every=0",
                     "train.save_every_steps=0", "train.save_every_minutes=0", "train.preview_every=0"])
    bm = tag(f"quality quickstart {STEPS} steps", variant, items=STEPS, amp=VARIANTS[variant], steps=STEPS,
             threads=torch.get_num_threads(), load_before=os.getloadavg())
    state = {}

    def train_once():
        with process_settings(r.train):
            t = build_trainer(r)
            t.make_loader()
            try:
                run(t, progress=False)
            finally:
                t.loader.close()
        state["trainer"] = t

    bm.pedantic(train_once, rounds=1, iterations=1, warmup_rounds=0)
    t = state["trainer"]
    assert t.step == STEPS and t.skipped == 0
    held = t.loader.held_out
    m = r.model
    t0 = time.perf_counter()
    ev = Evaluator(load_side(src, resolution=m.resolution, face_type=m.face_type, names=held.src.names),
                   load_side(dst, resolution=m.resolution, face_type=m.face_type, names=held.dst.names),
                   resolution=m.resolution, face_type=m.face_type)
    res = ev.evaluate(TorchEvalModel(t.model, r)).metrics
    quality = {k: v for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    bm.extra_info.update(quality=quality, quality_gate={k: list(v) for k, v in GATE.items()},
                         eval_s=round(time.perf_counter() - t0, 2), load_after=os.getloadavg(),
                         final_losses=t.last_losses)
    assert res["n_faces"] > 0 and res["real_identity_retrieval"] is not None
