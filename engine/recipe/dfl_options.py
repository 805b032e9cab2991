"""DFL SAEHD options (the dict pickled in `<name>_SAEHD_data.dat`, docs/dfl.md §1) -> recipe document.

Every option DFL stores maps onto one recipe key (the `dfl=` name in engine/recipe/specs.py); options a
recipe has no use for (GPU placement, preview history) are reported, not silently dropped.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs

from engine.recipe.load import from_dict
from engine.recipe.specs import TABLES

log = logging.getLogger("torchsae.recipe")

# DFL options with no recipe meaning (device placement, UI state).
IGNORED = {"models_opt_on_gpu", "write_preview_history", "choosed_gpu_indexes", "eyes_prio", "mouth_prio"}


def _dfl_index() -> dict[str, tuple[str, str]]:
    idx = {}
    for table, cls in TABLES.items():
        for f in attrs.fields(cls):
            name = f.metadata.get("dfl")
            if name:
                idx[name] = (table, f.name)
    return idx


def options_to_doc(options: dict[str, Any]) -> dict[str, Any]:
    """Map DFL's options dict onto recipe tables (DFL names and legacy values normalised)."""
    doc: dict[str, dict[str, Any]] = {}
    idx = _dfl_index()
    unknown = []
    for key, value in options.items():
        if key in IGNORED:
            continue
        if key == "adabelief":
            doc.setdefault("optim", {})["name"] = "adabelief" if value else "rmsprop"
            continue
        if key == "lr_dropout" and isinstance(value, bool):  # legacy bools (docs/dfl.md §1)
            value = "y" if value else "n"
        if key not in idx:
            unknown.append(key)
            continue
        table, field = idx[key]
        if hasattr(value, "item"):  # numpy scalars
            value = value.item()
        if key in ("face_style_power", "bg_style_power", "true_face_power", "gan_power", "random_hsv_power"):
            value = float(value)
        if key == "autobackup_hour":
            value = float(value)
        doc.setdefault(table, {})[field] = value
    if unknown:
        log.warning("DFL options with no recipe equivalent were ignored: %s", ", ".join(sorted(unknown)))
    return doc


def from_options(options: dict[str, Any], *, name: str = "dfl-import"):
    """A validated Recipe from DFL's options dict (raises RecipeErrors naming the option)."""
    return from_dict(options_to_doc(options), source=f"<DFL options of {name}>", name=name)


def to_options(recipe) -> dict[str, Any]:
    """The recipe's DFL options dict (the inverse of `from_options`, for writing a DFL data.dat): every
    recipe key with a DFL name, ``adabelief`` from optim.name, and DFL's explicit values where the recipe
    uses 0 for "DFL's default" (gan_patch_size → resolution // 8)."""
    out: dict[str, Any] = {}
    for table, cls in TABLES.items():
        spec = getattr(recipe, table)
        for f in attrs.fields(cls):
            name = f.metadata.get("dfl")
            if name:
                out[name] = getattr(spec, f.name)
    out["adabelief"] = recipe.optim.name == "adabelief"
    if not out.get("gan_patch_size"):
        out["gan_patch_size"] = recipe.model.resolution // 8
    for key in ("face_style_power", "bg_style_power", "true_face_power", "gan_power", "random_hsv_power",
                "autobackup_hour"):
        if key in out:
            out[key] = float(out[key])
    if "autobackup_hour" in out:  # DFL stores whole hours
        out["autobackup_hour"] = int(round(out["autobackup_hour"]))
    return out
