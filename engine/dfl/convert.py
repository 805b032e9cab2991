"""DFL SAEHD model folder <-> TorchSAE SwapModel (docs/dfl.md §8).

    recipe, model = import_model("workspace/model", name="mymodel")         # reads data.dat options too
    recipe, model = import_model("parts/", options={"archi": "df-ud", "resolution": 128, ...})  # bare parts
    export_dfl_parts(model, "out/", "mymodel")                               # back to DFL's layout

Import checks every key and shape of every part file against the model built from the options and
raises CheckpointError naming the part file, the key, the expected and the found shape (DFL itself
silently re-initialises a part that fails to load, docs/dfl.md §8.2; we refuse instead).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from engine import recipe as recipe_mod
from engine.dfl.files import (data_path, find_model_names, part_path, read_data_file, read_optimizer_file,
                              read_part_file, write_data_file, write_part_file)
from engine.dfl.keymap import dfl_shape_of, dfl_to_torch_array, torch_to_dfl_array, torch_to_dfl_name
from engine.errors import CheckpointError, TorchSAEError
from engine.graph import build
from engine.modules import discriminators as D
from engine.optim import (AdaBelief, RMSprop, make_optimizer, optimizer_from_dfl, optimizer_to_dfl,
                          saehd_param_groups)
from engine.recipe.specs import OptimSpec
from engine.train import checkpoint as ck

__all__ = ["MODEL_OPTION_KEYS", "import_model", "import_dfl_optimizer", "import_dfl_discriminators",
           "import_dfl_training_state", "export_dfl_checkpoint", "load_dfl_parts", "load_dfl_weights",
           "load_dfl_part_file", "dfl_part_arrays", "export_dfl_parts", "export_dfl_model", "dfl_model_options"]

log = logging.getLogger("torchsae.dfl")

# the options that decide the network (docs/dfl.md §1); the rest (losses, data) do not touch the weights
MODEL_OPTION_KEYS = ("archi", "resolution", "face_type", "ae_dims", "e_dims", "d_dims", "d_mask_dims")
_MAX_LISTED = 12


def dfl_part_arrays(module: nn.Module, part: str) -> dict[str, np.ndarray]:
    """A part's parameters as DFL stores them: {'down1/downs_0/conv1/weight:0': float32 array in DFL layout}."""
    return {torch_to_dfl_name(f"{part}.{k}"): torch_to_dfl_array(v.detach().cpu().float().numpy())
            for k, v in module.state_dict().items()}


def _stage_part(module: nn.Module, part: str, arrays: dict[str, np.ndarray], source: str,
                options: str = "archi, resolution and dims") -> list[tuple[nn.Parameter, np.ndarray]]:
    """Check one part's DFL arrays (keys without the part prefix) against ``module``; return
    (parameter, torch-layout array) pairs, or raise CheckpointError listing every problem."""
    params = dict(module.named_parameters())
    expected = {torch_to_dfl_name(f"{part}.{k}"): (p, dfl_shape_of(tuple(p.shape))) for k, p in params.items()}
    problems = []
    for key in expected:
        if key not in arrays:
            problems.append(f"key '{key}' missing (expected shape {expected[key][1]})")
    for key, arr in arrays.items():
        if key not in expected:
            problems.append(f"unexpected key '{key}' (shape {tuple(arr.shape)}) — this archi has no such weight")
        elif tuple(arr.shape) != expected[key][1]:
            problems.append(f"key '{key}': expected shape {expected[key][1]}, found {tuple(arr.shape)}")
        elif not np.issubdtype(arr.dtype, np.floating):
            problems.append(f"key '{key}': expected a float array, found dtype {arr.dtype}")
    if problems:
        more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise CheckpointError(f"{source}: does not fit part '{part}' of this model "
                              f"({len(problems)} problem{'s' if len(problems) > 1 else ''}; check the {options} "
                              "options):\n  " + "\n  ".join(problems[:_MAX_LISTED]) + more)
    return [(p, dfl_to_torch_array(arrays[key])) for key, (p, _) in expected.items()]


def load_dfl_part_file(module: nn.Module, path: str | Path, part: str, *,
                       options: str = "archi, resolution and dims") -> None:
    """Load one DFL part file into any module whose parameter names mirror DFL's variable names (e.g. a
    discriminator saved as ``GAN.npy`` with scope ``D_src``): same checks as `load_dfl_parts`; a file that
    does not fit names `options`, the options that decide the module's shapes."""
    staged = _stage_part(module, part, read_part_file(path), str(path), options)
    with torch.no_grad():
        for p, a in staged:
            p.copy_(torch.from_numpy(a))


def load_dfl_weights(model: nn.Module, arrays: dict[str, np.ndarray], source: str,
                     parts: Iterable[str] | None = None) -> None:
    """Load weights keyed by full DFL variable names (``encoder/down1/downs_0/conv1/weight:0``), e.g. a
    dict saved with ``np.savez``; same checks as `load_dfl_parts`, ``source`` names the file in errors.
    ``parts`` limits the parts loaded (keys of other parts must then be absent)."""
    all_parts = model.parts()
    if parts is not None:
        unknown = [p for p in parts if p not in all_parts]
        if unknown:
            raise CheckpointError(f"model has no part(s) {unknown} (parts: {', '.join(all_parts)})")
        all_parts = {p: all_parts[p] for p in parts}
    by_part: dict[str, dict[str, np.ndarray]] = {p: {} for p in all_parts}
    stray = []
    for key, arr in arrays.items():
        head, _, rest = key.partition("/")
        if head in by_part:
            by_part[head][rest] = arr
        else:
            stray.append(key)
    if stray:
        raise CheckpointError(f"{source}: keys of no part of this model ({', '.join(all_parts)}): "
                              + ", ".join(stray[:_MAX_LISTED]))
    staged = []
    for part, module in all_parts.items():
        staged.extend(_stage_part(module, part, by_part[part], f"{source} [{part}]"))
    with torch.no_grad():
        for p, a in staged:
            p.copy_(torch.from_numpy(a))


def load_dfl_parts(model: nn.Module, folder: str | Path, name: str | None = None,
                   parts: Iterable[str] | None = None) -> list[Path]:
    """Load DFL part files into ``model`` (a SwapModel or anything with ``parts()``); returns the files read.

    ``parts`` limits the parts loaded (default: all of ``model.parts()``). Every key of every file must
    match a parameter of the same (DFL-layout) shape and every parameter must be present; otherwise
    CheckpointError lists the problems (file, key, expected vs found shape). Nothing is modified unless
    every listed part loads.
    """
    folder = Path(folder)
    all_parts = model.parts()
    wanted = list(all_parts) if parts is None else list(parts)
    unknown = [p for p in wanted if p not in all_parts]
    if unknown:
        raise CheckpointError(f"model has no part(s) {unknown} (parts: {', '.join(all_parts)})")
    staged: list[tuple[nn.Parameter, np.ndarray]] = []
    read: list[Path] = []
    for part in wanted:
        module = all_parts[part]
        path = part_path(folder, part, name)
        if not path.is_file():
            present = sorted(p.name for p in folder.glob("*.npy")) if folder.is_dir() else []
            raise CheckpointError(f"{path}: DFL part file missing (this archi needs parts "
                                  f"{', '.join(all_parts)}; .npy files in {folder}: {', '.join(present) or 'none'})")
        staged.extend(_stage_part(module, part, read_part_file(path), str(path)))
        read.append(path)
    with torch.no_grad():
        for p, a in staged:
            p.copy_(torch.from_numpy(a))
    return read


def _resolve_folder(path: str | Path, name: str | None) -> tuple[Path, str | None, dict | None]:
    """(folder, model name or None for bare part files, data.dat contents or None)."""
    p = Path(path)
    if p.is_file() and p.name.endswith("_SAEHD_data.dat"):
        return p.parent, p.name[: -len("_SAEHD_data.dat")], read_data_file(p)
    if not p.is_dir():
        raise CheckpointError(f"{p}: not a DFL model folder (no such directory)")
    if name is None:
        names = find_model_names(p)
        if len(names) > 1:
            raise CheckpointError(f"{p}: holds several SAEHD models ({', '.join(names)}); choose one with --name")
        name = names[0] if names else None
    data = None
    if name is not None:
        dp = data_path(p, name)
        if dp.is_file():
            data = read_data_file(dp)
        elif not any(p.glob(f"{name}_SAEHD_*.npy")):
            have = find_model_names(p)
            raise CheckpointError(f"{p}: no SAEHD model named '{name}' (found: {', '.join(have) or 'none'})")
    return p, name, data


def import_model(path: str | Path, *, name: str | None = None, options: dict[str, Any] | None = None,
                 device=None):
    """Read a DFL SAEHD model folder -> (Recipe, SwapModel with DFL's weights).

    ``path``: the models folder (or its ``<name>_SAEHD_data.dat``); ``name``: which model when the folder
    holds several. The options come from data.dat; ``options`` (DFL option names: archi, resolution,
    face_type, ae_dims, e_dims, d_dims, d_mask_dims, ...) override them, and are required for a folder of
    part files without data.dat. The recipe is made by ``engine.recipe.from_options``.
    """
    folder, name, data = _resolve_folder(path, name)
    opts: dict[str, Any] = dict(data["options"]) if data else {}
    if options:
        changed = {k: (opts[k], v) for k, v in options.items() if k in opts and opts[k] != v}
        if changed:
            log.warning("options given override the model's saved options: %s",
                        ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()))
        opts.update(options)
    if "archi" not in opts or "resolution" not in opts:
        raise CheckpointError(f"{folder}: no {'data.dat' if name is None else f'{name}_SAEHD_data.dat'} with the "
                              "model's options; give at least archi and resolution (and ae_dims, e_dims, d_dims, "
                              "d_mask_dims unless they are DFL's defaults 256/64/64/22)")
    if data is not None:
        log.info("DFL model '%s': iter %s, archi %s, resolution %s", name, data.get("iter"), opts.get("archi"),
                 opts.get("resolution"))
    recipe = recipe_mod.from_options(opts, name=name or folder.name)
    model = build(recipe, device=device)
    load_dfl_parts(model, folder, name)
    return recipe, model


OPTIMIZER_PART = "src_dst_opt"  # DFL's generator optimizer file (<name>_SAEHD_src_dst_opt.npy)


def _saveable(model: nn.Module) -> dict[str, nn.Parameter]:
    """{torch name: parameter} of DFL's saveable set (docs/dfl.md §3.6), in the trainer's order."""
    return saehd_param_groups(model, model.model_spec.archi_type, True)[1]


def _optimizer_state(path: Path, optimizer: str, params: dict[str, tuple[str, nn.Parameter]],
                     to_torch) -> dict[str, Any]:
    """Read a DFL optimizer file for ``params`` ({torch name: (DFL variable name, parameter)}) and return
    ``{"name", "iterations", "state": {torch name: {slot: tensor}}}``; checked by loading it into a scratch
    optimizer of the recipe's class (`engine.optim.optimizer_from_dfl`: every slot key, every shape)."""
    classes = {"adabelief": AdaBelief, "rmsprop": RMSprop}
    if optimizer not in classes:
        raise CheckpointError(f"{path}: DFL optimizer state is for adabelief or rmsprop, not {optimizer!r}")
    data = read_optimizer_file(path)
    # the other optimizer's slots in the file: the options and the file disagree (say so, not "missing key")
    wanted, other = ("acc_", "ms_") if optimizer == "rmsprop" else ("ms_", "acc_")
    if not any(k.startswith(wanted) for k in data) and any(k.startswith(other) for k in data):
        raise CheckpointError(f"{path}: holds {'AdaBelief' if other == 'ms_' else 'RMSprop'} state, but the model's "
                              f"options say optimizer {optimizer!r} (data.dat 'adabelief' option); pass the matching "
                              "option or remove the optimizer file to start with fresh state")
    scratch = classes[optimizer]([p for _, p in params.values()])
    by_dfl = {v: p for v, p in params.values()}
    optimizer_from_dfl(scratch, data, by_dfl, to_torch, source=str(path))
    names = {id(p): n for n, (_, p) in params.items()}
    state = {names[id(p)]: {k: v.detach().cpu().clone() for k, v in st.items()} for p, st in scratch.state.items()}
    log.info("%s: DFL optimizer state (%s, iters %d) for %d weights", path, optimizer, scratch.iterations, len(state))
    return {"name": optimizer, "iterations": int(scratch.iterations), "state": state}


def import_dfl_optimizer(folder: str | Path, name: str | None, model: nn.Module, optimizer: str
                         ) -> dict[str, Any] | None:
    """DFL's generator optimizer state (``<name>_SAEHD_src_dst_opt.npy``, docs/dfl.md §8.2) for ``model``.

    Returns ``{"name": "adabelief" | "rmsprop", "iterations": DFL's iters, "state": {torch parameter
    name: {slot: tensor in torch layout}}}`` (AdaBelief slots ms/vs, RMSprop acc), or None when the
    folder has no optimizer file. ``optimizer`` is the recipe's optimizer name (from data.dat's
    ``adabelief`` option); the file must hold that optimizer's slots for every saveable weight, in the
    weights' shapes, else CheckpointError names the file and the key. `Trainer.load` puts the state into
    the real optimizer when training starts from the imported checkpoint.
    """
    path = part_path(folder, OPTIMIZER_PART, name)
    if not path.is_file():
        log.info("%s: no DFL optimizer file; training from this import starts with fresh optimizer state", path)
        return None
    params = {n: (torch_to_dfl_name(n, strip_part=False), p) for n, p in _saveable(model).items()}
    return _optimizer_state(path, optimizer, params, lambda _v, a: dfl_to_torch_array(a))


# our trainer's attribute -> (DFL weight file, DFL optimizer file, DFL variable scope); docs/dfl.md §8.1, §8.2
DISCRIMINATOR_FILES = {"code_d": ("code_discriminator", "D_code_opt", "dis"), "gan_d": ("GAN", "GAN_opt", "D_src")}
# the options that decide each discriminator's shapes (named when a file does not fit them)
_DISCRIMINATOR_OPTIONS = {"code_d": "ae_dims and resolution", "gan_d": "resolution, gan_patch_size and gan_dims"}


def _discriminator(attr: str, recipe, model: nn.Module) -> nn.Module:
    """The trainer's discriminator `attr` for this recipe (as engine.train.build.build_trainer builds it)."""
    if attr == "code_d":
        return D.code_discriminator_for(model, recipe.model.ae_dims)
    return D.gan_discriminator_for(recipe.model.resolution, recipe.loss.gan_patch_size, recipe.loss.gan_dims)


def _scoped_names(module: nn.Module, scope: str) -> dict[str, tuple[str, nn.Parameter]]:
    """{torch name: (DFL variable name ``<scope>/<path>/<weight|bias>:0``, parameter)} (engine.dfl.keymap)."""
    return {n: (torch_to_dfl_name(f"{scope}.{n}", strip_part=False), p) for n, p in module.named_parameters()}


def import_dfl_discriminators(folder: str | Path, name: str | None, recipe, model: nn.Module
                              ) -> dict[str, dict[str, Any]]:
    """DFL's discriminators, where their files exist: ``{"code_d" | "gan_d": {"model": state_dict,
    "optimizer": optimizer state as `import_dfl_optimizer` or None}}``.

    ``code_discriminator.npy`` (DF with true_face_power, scope ``dis``) and ``GAN.npy`` (gan_power, scope
    ``D_src``) are built with the recipe's options (ae_dims; gan_patch_size, gan_dims) and must fit them
    exactly: DFL re-initialises a discriminator whose options changed (§1), so a file that does not fit the
    options is refused here (CheckpointError naming file, key and shapes) rather than silently dropped.
    """
    out: dict[str, dict[str, Any]] = {}
    for attr, (wfile, ofile, scope) in DISCRIMINATOR_FILES.items():
        wpath = part_path(folder, wfile, name)
        if not wpath.is_file():
            continue
        if attr == "code_d" and (getattr(model, "dfl_archi", None) is None or recipe.model.archi_type != "df"):
            log.info("%s: the code discriminator belongs to DF models; ignored for %s", wpath, recipe.model.archi)
            continue
        mod = _discriminator(attr, recipe, model)
        load_dfl_part_file(mod, wpath, scope, options=_DISCRIMINATOR_OPTIONS[attr])
        opath = part_path(folder, ofile, name)
        opt = None
        if opath.is_file():
            opt = _optimizer_state(opath, recipe.optim.name, _scoped_names(mod, scope),
                                   lambda _v, a: dfl_to_torch_array(a))
        out[attr] = {"model": {k: v.detach().cpu() for k, v in mod.state_dict().items()}, "optimizer": opt}
        log.info("%s: imported the %s discriminator%s", wpath, attr, " with its optimizer state" if opt else "")
    return out


def import_dfl_training_state(path: str | Path, model: nn.Module, recipe, *, name: str | None = None
                              ) -> dict[str, Any]:
    """What training needs to continue where DFL stopped, for the model folder ``path`` that `import_model`
    read into ``model``: ``{"iter": DFL's counter from data.dat (0 without it; lr_cos and the schedules
    count from it), "dfl_optimizer": `import_dfl_optimizer` or None, "dfl_code_d" / "dfl_gan_d":
    `import_dfl_discriminators` entries where present}``."""
    folder, name, data = _resolve_folder(path, name)
    out: dict[str, Any] = {"iter": int(data.get("iter", 0) or 0) if data else 0,
                           "dfl_optimizer": import_dfl_optimizer(folder, name, model, recipe.optim.name)}
    for attr, entry in import_dfl_discriminators(folder, name, recipe, model).items():
        out["dfl_" + attr] = entry
    return out


# ---------------------------------------------------------------------------------------------------------
# export


def export_dfl_parts(model: nn.Module, folder: str | Path, name: str | None = None) -> list[Path]:
    """Write every part of ``model`` as DFL part files (``<name>_SAEHD_<part>.npy``, or ``<part>.npy`` when
    name is None): protocol-4 pickles of {key: float32 array in DFL layout}, written atomically.

    Only graphs with DFL's wiring (``model.dfl_archi`` set) can be loaded by DFL; others raise.
    """
    if getattr(model, "dfl_archi", None) is None:
        raise TorchSAEError("this model's graph is not one of DFL's archis (df/liae presets), so DFL could not load "
                            "its parts; export it to ONNX instead")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [write_part_file(part_path(folder, part, name), dfl_part_arrays(module, part))
            for part, module in model.parts().items()]


def dfl_model_options(model_spec: Any) -> dict[str, Any]:
    """The network options of a ModelSpec under DFL's names (docs/dfl.md §1)."""
    return {k: getattr(model_spec, k) for k in MODEL_OPTION_KEYS}


def export_dfl_model(model: nn.Module, folder: str | Path, name: str, *, options: dict[str, Any] | None = None,
                     iter: int = 1) -> list[Path]:
    """Parts plus a ``<name>_SAEHD_data.dat`` so DFL opens the folder as an existing model.

    ``options`` defaults to the network options of ``model.model_spec``; DFL fills the other options with
    its defaults. DFL treats ``iter == 0`` as a first run (it asks for options and re-initialises the
    weights), so ``iter`` must be >= 1.
    """
    if iter < 1:
        raise TorchSAEError(f"iter = {iter}: DFL treats 0 as a new model and would discard the weights; use >= 1")
    opts = dict(options) if options is not None else dfl_model_options(model.model_spec)
    files = export_dfl_parts(model, folder, name)
    files.append(write_data_file(data_path(folder, name), opts, iter=iter))
    return files


def export_dfl_checkpoint(path: str | Path, folder: str | Path, name: str) -> list[Path]:
    """A TorchSAE checkpoint -> a DFL SAEHD model folder DFL continues training (docs/dfl.md §8.1).

    Writes the part files, ``<name>_SAEHD_data.dat`` (all the recipe's DFL options, ``iter`` = the step,
    the loss history), and, from a training checkpoint (a ``step_*`` / run folder with train_state.pt),
    ``src_dst_opt.npy`` plus the code / GAN discriminators and their optimizer files when the run has
    them. The inverse of ``import-dfl``: importing the folder gives back the same weights and state.
    Raises TorchSAEError for graphs DFL cannot express and for step 0 (DFL treats iter 0 as a new model and
    would re-initialise it). A run with adam/adamw (no DFL file format) gets weights and options only, with
    a warning.
    """
    loaded = ck.load(path, train_state=True)  # one verified checkpoint for both files (a run folder: its newest)
    payload, state = loaded.payload, loaded.state
    recipe = recipe_mod.loads(payload["recipe_toml"], source=f"{path} (stored recipe)")
    model = build(recipe)
    model.load_state_dict(payload["model"])
    if getattr(model, "dfl_archi", None) is None:
        raise TorchSAEError(f"{path}: this model's graph is not one of DFL's archis (df/liae presets), so DFL could "
                            "not load it; export it to ONNX instead")
    step = int(payload.get("step", 0))
    if step < 1:
        raise TorchSAEError(f"{path}: step 0 (an untrained model); DFL treats iter 0 as a new model and would "
                            "re-initialise its weights")
    folder = Path(folder)
    files = export_dfl_parts(model, folder, name)
    history = state["history"].tolist() if state is not None and len(state.get("history", [])) else []
    files.append(write_data_file(data_path(folder, name), recipe_mod.to_options(recipe), iter=step,
                                 loss_history=history))
    if state is None:
        log.info("%s: an inference checkpoint (no train_state.pt): DFL gets the weights, its optimizers start fresh",
                 path)
        return files
    if recipe.optim.name not in ("adabelief", "rmsprop"):
        log.warning("%s: optimizer %r has no DFL file format; DFL's optimizer starts fresh", path, recipe.optim.name)
        return files
    cfg = OptimSpec(name=recipe.optim.name)  # the state's layout only: no lr dropout, no clipping
    saveable = _saveable(model)
    g_opt = make_optimizer(list(saveable.values()), cfg)
    g_opt.load_state_dict(state["g_opt"])
    by_dfl = {torch_to_dfl_name(n, strip_part=False): p for n, p in saveable.items()}
    files.append(write_part_file(part_path(folder, OPTIMIZER_PART, name),
                                 optimizer_to_dfl(g_opt, by_dfl, lambda _v, a: torch_to_dfl_array(a))))
    for attr, (wfile, ofile, scope) in DISCRIMINATOR_FILES.items():
        if attr not in state:
            continue
        mod = _discriminator(attr, recipe, model)
        mod.load_state_dict(state[attr])
        files.append(write_part_file(part_path(folder, wfile, name), dfl_part_arrays(mod, scope)))
        d_opt = make_optimizer(list(mod.parameters()), cfg)  # the trainer's order: mod.parameters()
        d_opt.load_state_dict(state[attr + "_opt"])
        files.append(write_part_file(part_path(folder, ofile, name), optimizer_to_dfl(
            d_opt, dict(_scoped_names(mod, scope).values()), lambda _v, a: torch_to_dfl_array(a))))
    return files
