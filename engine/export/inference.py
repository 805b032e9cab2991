"""Where export and swap get a model from: a TorchSAE checkpoint, a DFL model folder, or a recipe's newest
checkpoint. Every inference-side reader goes through `load_for_inference`, the one adapter onto the
training engine's checkpoint format.

Checkpoints are read by ``engine.train.checkpoint.load_model_payload`` (``torch.load(weights_only=True)``:
data, never code), which accepts a ``model.pt`` file, a ``step_*`` checkpoint folder or a run folder (its
``latest`` checkpoint); the payload holds ``"recipe_toml"`` (the resolved recipe, rebuilt with
``engine.recipe.loads``) and ``"model"`` (the SwapModel state dict). A folder holding DFL part files
(``<name>_SAEHD_encoder.npy``... or bare ``encoder.npy``...) is imported with
``engine.dfl.import_model`` (docs/dfl.md §8).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import attrs

from engine import graph
from engine import recipe as recipe_mod
from engine.dfl import import_model
from engine.errors import CheckpointError, TorchSAEError
from engine.recipe.specs import Recipe
from engine.train.checkpoint import candidates, load_model_payload, run_dir_of

log = logging.getLogger("torchsae.export")

__all__ = ["load_for_inference", "latest_checkpoint", "model_source", "recipe_run_dirs", "run_dir_of",
           "default_export_path"]

_NAME_RE = re.compile(r"^#\s*resolved recipe '([^']+)'", re.MULTILINE)


def recipe_run_dirs(recipe: Recipe) -> list[Path]:
    """Where a recipe's run folder may be: `run_dir_of` taken against the recipe's project (the folder that
    holds its ``recipes/`` folder, else the recipe file's own folder) and against the current directory
    (where `torchsae train` put it when started there); an absolute ``[train].run_dir`` is the only one."""
    rel = run_dir_of(recipe)
    if rel.is_absolute():
        return [rel]
    bases = []
    if recipe.source:
        here = Path(recipe.source).resolve().parent
        bases.append(next((p.parent for p in (here, *here.parents) if p.name == "recipes"), here))
    bases.append(Path.cwd())
    out: list[Path] = []
    for base in bases:
        cand = (base / rel).resolve()
        if cand not in out:
            out.append(cand)
    return out


def latest_checkpoint(recipe: Recipe | str | Path) -> Path:
    """The newest checkpoint of a recipe (a Recipe, or a recipe file), in its run folder (`recipe_run_dirs`:
    the recipe's project, then the current directory): the run folder itself when it holds trainer
    checkpoints (``checkpoints/step_*``; reading it takes the newest one that verifies, see
    ``engine.train.checkpoint.load``), else the newest ``checkpoints/*.pt`` or ``*.pt`` file (by
    modification time, ties by name; e.g. what ``torchsae import-dfl --out`` wrote). Raises CheckpointError
    naming the folders when there is none."""
    if not isinstance(recipe, Recipe):
        recipe = recipe_mod.load(recipe)
    what = recipe.source or recipe.name
    runs = recipe_run_dirs(recipe)
    for run in runs:
        if candidates(run):
            log.info("latest checkpoint of %s: %s", what, run)
            return run
        for folder in (run / "checkpoints", run):
            files = [p for p in folder.glob("*.pt") if p.is_file()] if folder.is_dir() else []
            if files:
                best = max(files, key=lambda p: (p.stat().st_mtime_ns, p.name))
                log.info("latest checkpoint of %s: %s", what, best)
                return best
    raise CheckpointError(f"{what}: no checkpoint in its run folder ({' or '.join(str(r) for r in runs)}; looked "
                          "for checkpoints/step_*/model.pt, checkpoints/*.pt and *.pt); train the recipe first or "
                          "pass a checkpoint path")


def model_source(path: str | Path) -> Path:
    """What a command's model argument names: a recipe (`.toml`) means its newest checkpoint
    (`latest_checkpoint`); anything else (checkpoint, run folder, DFL model folder) is taken as it is."""
    path = Path(path)
    return latest_checkpoint(path) if path.suffix == ".toml" else path


def _is_dfl_folder(path: Path) -> bool:
    return path.is_dir() and (any(path.glob("*encoder.npy")) or any(path.glob("*_SAEHD_data.dat")))


def load_for_inference(path: str | Path, *, dfl_options: dict | None = None):
    """Load a model for inference: ``(Recipe, SwapModel)`` in eval mode on the CPU.

    `path`: a checkpoint (``model.pt``, a ``step_*`` folder or a run folder) or a DFL model folder
    (imported with ``engine.dfl.import_model(path, options=dfl_options)``; options are required when
    the folder has no data.dat). Raises CheckpointError naming the file and what is wrong.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder (expected a TorchSAE checkpoint or a DFL model folder)")
    if _is_dfl_folder(path):
        recipe, model = import_model(path, options=dfl_options)
        return recipe, model.eval()
    return _from_payload(load_model_payload(path), path)


def _from_payload(payload: dict, path: Path):
    missing = [k for k in ("recipe_toml", "model") if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}; an inference checkpoint stores the resolved recipe "
                              "as 'recipe_toml' and the weights as 'model'")
    text, state = payload["recipe_toml"], payload["model"]
    if not isinstance(text, str) or not isinstance(state, dict):
        raise CheckpointError(f"{path}: 'recipe_toml' must be text and 'model' a state dict, got "
                              f"{type(text).__name__} and {type(state).__name__}")
    try:
        recipe = recipe_mod.loads(text, source=f"{path} (stored recipe)")
    except TorchSAEError as e:
        raise CheckpointError(f"{path}: the stored recipe does not validate:\n{e}") from None
    m = _NAME_RE.search(text)  # engine.recipe.dumps writes the recipe's name in its header comment
    recipe = attrs.evolve(recipe, name=m.group(1) if m else path.stem)
    model = graph.build(recipe.model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise CheckpointError(f"{path}: weights do not fit the stored recipe's graph ({recipe.model.archi}, res "
                              f"{recipe.model.resolution}): {' '.join(lines[1:3])[:400]}") from None
    return recipe, model.eval()


def default_export_path(source: str | Path, recipe, fmt: str, *, parts: bool = False) -> Path:
    """Where `torchsae export` writes without --out: ``<run dir>/export/<recipe name>.<fmt>`` (a
    ``<recipe name>_parts/`` folder with --parts). The run dir is the folder above ``checkpoints/`` when
    the source lies inside one, else the source folder (a DFL model folder, a run folder) or the
    checkpoint file's folder."""
    source = Path(source)
    base = source if source.is_dir() else source.parent
    for p in (base, *base.parents):
        if p.name == "checkpoints":
            base = p.parent
            break
    return base / "export" / (f"{recipe.name}_parts" if parts else f"{recipe.name}.{fmt}")
