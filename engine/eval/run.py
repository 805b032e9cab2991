"""Evaluate several models and write the report: what `torchsae eval` does, callable from Python.

    entries = evaluate_paths(["runs/quickstart"], out="runs/quickstart/eval")      # every checkpoint of a run
    entries = evaluate_paths(["a.pt", "b.dfm"], out="cmp", faces=("src/aligned", "dst/aligned"))

Faces per model: `faces` (src folder, dst folder) when given, else the held-out faces the checkpoint
recorded (engine.data.holdout; a model trained with [data].eval_fraction = 0, an exported or an imported
model has none, and then `faces` is required). Models of the same geometry (resolution, face type) on
the same faces share one Evaluator, so the real faces are analysed once.

A model that cannot be evaluated (unreadable file, no faces to use, unknown face type) gets an entry with
"error" and the others go on; `faces` that are the model's own training folders give a warning in its
entry (the numbers then measure fit, not generalisation).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from engine.data import holdout
from engine.errors import TorchSAEError
from engine.eval.evaluate import EvalResult, Evaluator
from engine.eval.faces import EvalSide, load_side
from engine.eval.models import EvalModel, ModelRef, expand_inputs, open_eval_model
from engine.eval.report import write_report

__all__ = ["evaluate_paths", "faces_for", "entry_for"]

log = logging.getLogger("torchsae.eval")


def _same_folder(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def faces_for(model: EvalModel, faces: tuple[str, str] | None) -> tuple[tuple, dict[str, Any], list[str]]:
    """(spec, description, warnings) of the faces `model` is evaluated on. spec = (src folder, src names or
    None, dst folder, dst names or None). TorchSAEError when there are none to use."""
    warnings: list[str] = []
    if faces is not None:
        src, dst = faces
        desc = {"source": "--faces", "src": str(src), "dst": str(dst)}
        data = getattr(model.recipe, "data", None)
        if data is not None:
            held = model.held_out
            for side, folder, trained in (("src", src, data.src), ("dst", dst, data.dst)):
                if _same_folder(folder, trained):
                    n_held = len(held[side]["names"]) if held else 0
                    warnings.append(f"--faces {side} {folder} is the folder this model trained on"
                                    + (f" (only {n_held} of its faces were held out)" if n_held else "")
                                    + ": the numbers measure fit, not generalisation")
        return (str(src), None, str(dst), None), desc, warnings
    if model.held_out is None:
        raise TorchSAEError(f"{model.path}: no held-out faces recorded (the model was trained with "
                            "[data].eval_fraction = 0, or is an exported or imported model); pass --faces SRC DST")
    held = holdout.from_record(model.held_out, str(model.path))
    for side in (held.src, held.dst):
        if not Path(side.folder).exists():
            raise TorchSAEError(f"{model.path}: its held-out faces were in {side.folder}, which does not exist from "
                                f"here (paths are relative to where training ran); run from there or pass --faces")
    desc = {"source": "held-out faces recorded in the checkpoint", "src": held.src.folder, "dst": held.dst.folder,
            "fraction": held.fraction, "block": held.block}
    return (held.src.folder, held.src.names, held.dst.folder, held.dst.names), desc, warnings


def entry_for(model: EvalModel, result: EvalResult, faces_desc: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    """One model's eval.json entry: info, faces, metrics (warnings merged), per-face scores."""
    e = model.info()
    e["faces"] = faces_desc
    e.update(result.metrics)
    e["warnings"] = list(warnings) + list(result.metrics.get("warnings", []))
    e["per_face"] = result.per_face
    return e


def evaluate_paths(paths: list[str | Path], out: str | Path, *, faces: tuple[str, str] | None = None,
                   max_faces: int = 0, face_type: str | None = None, detect: bool = True, n_samples: int = 6,
                   device: str | None = None, plain_face_type: str = "wf", overrides: tuple[str, ...] = ()
                   ) -> list[dict[str, Any]]:
    """Evaluate every model `paths` name (engine.eval.models.expand_inputs; `overrides` apply to recipes among
    them) and write the report into `out`; returns the eval.json entries."""
    refs: list[ModelRef] = expand_inputs(paths, overrides)
    evaluators: dict[tuple, Evaluator] = {}
    sides: dict[tuple, EvalSide] = {}
    entries: list[dict[str, Any]] = []
    results: list[EvalResult | None] = []
    for ref in refs:
        base = {"model": str(ref.path), "label": ref.path.name, "kind": ref.kind,
                "run": str(ref.run) if ref.run else None}
        try:
            model = open_eval_model(ref, face_type=face_type, device=device)
            base = model.info()
            if not model.face_type:
                raise TorchSAEError(f"{ref.path}: the file does not say which face type it was trained on; pass "
                                    "--face-type (h, mf, f, wf or head)")
            spec, desc, warnings = faces_for(model, faces)
            geo = (model.resolution, model.face_type)
            key = spec + geo + (max_faces,)
            if key not in evaluators:
                loaded = []
                for label, folder, names in (("src", spec[0], spec[1]), ("dst", spec[2], spec[3])):
                    skey = (folder, names) + geo + (max_faces,)
                    if skey not in sides:
                        sides[skey] = load_side(folder, resolution=model.resolution, face_type=model.face_type,
                                                names=names, max_faces=max_faces, plain_face_type=plain_face_type,
                                                label=f"{label} faces")
                    loaded.append(sides[skey])
                evaluators[key] = Evaluator(loaded[0], loaded[1], resolution=model.resolution,
                                            face_type=model.face_type, detect=detect, n_samples=n_samples)
            log.info("eval: %s (%s, %dpx %s) on %d src / %d dst faces", model.label, model.kind, model.resolution,
                     model.face_type, len(evaluators[key].src), len(evaluators[key].dst))
            result = evaluators[key].evaluate(model)
        except TorchSAEError as e:
            log.error("eval: %s", e)
            entries.append({**base, "error": str(e)})
            results.append(None)
            continue
        entries.append(entry_for(model, result, desc, warnings))
        results.append(result)
    write_report(out, entries, results)
    return entries
