"""[train].eval_every: the same evaluation as `torchsae eval`, on the run's held-out faces, during training.

    evaluator = TrainingEvaluator(recipe)          # torchsae train attaches it (engine.train.cli)
    train(recipe, evaluator=evaluator)             # the loop calls evaluator.after_step(trainer, tlog) each step

Every `eval_every` steps (rank 0 only) the live model is scored on the held-out faces the loader kept out
of training (engine.data.holdout; at most [train].eval_faces per side, spread evenly), and

    TensorBoard       eval/<metric> for every numeric metric, eval/samples (the grid image)
    <run>/logs/eval.jsonl          one JSON line per evaluation: step, metrics, seconds
    <run>/logs/eval/step_XXXXXXXX.png   the sample grid

The loop stalls for the evaluation and nothing else: faces are converted, dlib's models loaded and the
real faces analysed once, at the first evaluation; later ones run only the model's swaps and
reconstructions and dlib on the swaps (the loader's workers keep preparing batches meanwhile). The model
is switched to eval mode and back and no random number generator is touched, so training with and
without evaluation gives the same weights. An evaluation that fails is logged and training goes on.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import cv2

from engine.errors import TorchSAEError
from engine.eval.evaluate import Evaluator
from engine.eval.faces import load_side
from engine.eval.models import TorchEvalModel
from engine.eval.report import grid_image, json_safe
from engine.fileio import write_atomic

__all__ = ["TrainingEvaluator"]

log = logging.getLogger("torchsae.eval")


class TrainingEvaluator:
    """Runs every `recipe.train.eval_every` steps; `history` keeps each evaluation's record."""

    def __init__(self, recipe, *, detect: bool = True, n_samples: int = 4):
        self.recipe = recipe
        self.every = int(recipe.train.eval_every)
        self.max_faces = int(recipe.train.eval_faces)
        self.detect = detect
        self.n_samples = n_samples
        self._ev: Evaluator | None = None
        self._held_key: Any = None
        self.history: list[dict[str, Any]] = []
        self.failures = 0

    def after_step(self, trainer, tlog=None) -> None:
        """Evaluate when the step is due (engine.train.loop.run calls this after every step's save); `tlog`:
        the run's engine.train.logs.TrainLog, whose TensorBoard writer gets the eval/* scalars."""
        if not self.every or trainer.step == 0 or trainer.step % self.every or not trainer.dist.is_main:
            return
        if self.history and self.history[-1]["step"] == trainer.step:
            return  # the same step again (e.g. a rollback re-reached it): already evaluated
        try:
            self.evaluate(trainer, getattr(tlog, "writer", None))
        except Exception as e:  # noqa: BLE001 - an evaluation problem must never end a training run
            self.failures += 1
            if isinstance(e, TorchSAEError):
                log.warning("eval at step %d skipped: %s", trainer.step, e)
            else:
                log.exception("eval at step %d failed; training continues", trainer.step)

    def _evaluator(self, trainer) -> Evaluator:
        held = getattr(trainer.loader, "held_out", None)
        if held is None:
            raise TorchSAEError("[train].eval_every: the loader holds no faces out (set [data].eval_fraction or "
                                "[data].eval_src / eval_dst)")
        key = held.record()
        if self._ev is None or key != self._held_key:
            m = self.recipe.model
            data = self.recipe.data
            src = load_side(held.src.folder, resolution=m.resolution, face_type=m.face_type, names=held.src.names,
                            max_faces=self.max_faces, plain_face_type=data.plain_face_type, label="held-out src faces")
            dst = load_side(held.dst.folder, resolution=m.resolution, face_type=m.face_type, names=held.dst.names,
                            max_faces=self.max_faces, plain_face_type=data.plain_face_type, label="held-out dst faces")
            self._ev = Evaluator(src, dst, resolution=m.resolution, face_type=m.face_type, detect=self.detect,
                                 n_samples=self.n_samples, kernels=self.recipe.compile.kernels)
            self._held_key = key
        return self._ev

    def evaluate(self, trainer, writer=None) -> dict[str, Any]:
        """Score the trainer's model now; log and write the record (TensorBoard through `writer`); return it."""
        t0 = time.perf_counter()
        ev = self._evaluator(trainer)
        model = TorchEvalModel(trainer.model, self.recipe, path=trainer.run_dir, label=f"step {trainer.step}",
                               step=trainer.step, device=trainer.device)
        res = ev.evaluate(model)
        seconds = time.perf_counter() - t0
        numeric = {k: v for k, v in res.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        rec = {"step": trainer.step, "seconds": round(seconds, 3), **res.metrics}
        self.history.append(rec)
        logs = Path(trainer.run_dir) / "logs"
        path = logs / "eval.jsonl"
        old = path.read_text() if path.is_file() else ""
        write_atomic(path, old + json.dumps(json_safe(rec)) + "\n")
        grid = grid_image(res.samples, res.sample_scores, [f"step {trainer.step}"])
        ok, enc = cv2.imencode(".png", grid)
        if ok:
            write_atomic(logs / "eval" / f"step_{trainer.step:08d}.png", enc.tobytes())
        w = writer
        if w is not None:
            for k, v in numeric.items():
                w.add_scalar(f"eval/{k}", v, trainer.step)
            w.add_scalar("eval/seconds", seconds, trainer.step)
            w.add_image("eval/samples", grid[..., ::-1].copy(), trainer.step, dataformats="HWC")
        g = res.metrics.get
        log.info("eval step %d (%.1f s): identity retrieval %s (real %s), margin %s, landmark NME %s, yaw err %s°, "
                 "recon DSSIM src %s dst %s", trainer.step, seconds, _f(g("identity_retrieval")),
                 _f(g("real_identity_retrieval")), _f(g("identity_margin")), _f(g("landmark_nme")),
                 _f(g("yaw_error_deg")), _f(g("recon_dssim_src")), _f(g("recon_dssim_dst")))
        return rec


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"
