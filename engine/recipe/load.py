"""TOML recipe -> frozen `Recipe`, with every problem collected and raised once.

    recipe = load("recipes/df256.toml", overrides=["optim.lr=1e-4", "~loss.gan_power"])

Rules (README "Recipes"):
- Tables: [data] [model] [graph] [loss] [schedule] [optim] [train] [export] [compile] [merge]; unknown
  tables and keys are errors with a did-you-mean and the list of valid names.
- `kind = "xseg"` (top level) makes an XSeg recipe (`torchsae xseg train`): tables [xseg] and [train] only,
  and of [train] only the loop keys XSeg uses (specs.XSEG_TRAIN_KEYS); anything else is an error, never
  silently ignored. The default kind is "saehd", which has no [xseg] table.
- `extends = "other.toml"` (relative to the file) merges the recipe over one base; a base may not extend.
- Overrides `table.key=value` must name an existing key; the value is read as a TOML value (a bare word
  becomes a string) and type-checked like the file. `~table.key` removes the key (back to its default).
- Derived values are computed here, never written in TOML: `d_mask_dims` defaults to DFL's `d_dims//3`
  rounded up to even when not given (docs/dfl.md §1).
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any, Iterable

import attrs

from engine.errors import RecipeError, RecipeErrors, did_you_mean
from engine.recipe.graph_spec import graph_to_dict, parse_graph_table
from engine.recipe.specs import (ARCHI_OPTS, ARCHI_TYPES, KIND_TABLES, RECIPE_KINDS, TABLES, XSEG_TRAIN_KEYS, LossSpec,
                                 ModelSpec, Recipe)
from engine.recipe.toml_write import dumps as toml_dumps

ALL_TABLES = tuple(TABLES) + ("graph",)
TOP_KEYS = ("extends", "kind")


class _Bad:
    """Marker for a value that failed its check (the error is already recorded)."""


_BAD = _Bad()


class _Ctx:
    """Where values came from (file text for line numbers, override strings) and the errors so far."""

    def __init__(self, source: str | None, text: str | None):
        self.source = source
        self.text = text or ""
        self.errors: list[RecipeError] = []
        self.origin: dict[tuple[str, str], str] = {}  # (table, key) -> "override 'k=v'"

    def error(self, key_path: str | None, message: str, hint: str = "", table: str | None = None,
              key: str | None = None) -> None:
        origin = self.origin.get((table, key)) if table and key else None
        if origin:
            self.errors.append(RecipeError(None, None, f"{origin}: {message}", hint))
        else:
            line = _line_of(self.text, table, key)
            self.errors.append(RecipeError(self.source, key_path, message, hint, line=line))


def _line_of(text: str, table: str | None, key: str | None) -> int | None:
    """1-based line of `key = ...` inside `[table]` (best effort: tomllib reports no positions)."""
    if not text or key is None:
        return None
    current = ""
    for i, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        m = re.match(r"^\[\[?\s*([^\]]+?)\s*\]\]?", line)
        if m:
            current = m.group(1).replace(" ", "")
            continue
        if current == (table or "") and re.match(rf'^"?{re.escape(key)}"?\s*=', line):
            return i
    return None


def _show(v: Any) -> str:
    return f"'{v}'" if isinstance(v, str) else repr(v)


# ---------------------------------------------------------------------------------------------------------
# field checking


def _check(field: attrs.Attribute, value: Any, where: str, ctx: _Ctx, table: str, key: str) -> Any:
    """Convert and check one value against its field's schema; returns _BAD after recording an error."""
    meta = field.metadata
    t = meta["type"]
    err = lambda msg, hint="": ctx.error(where, msg, hint, table=table, key=key)  # noqa: E731
    if meta.get("auto") and value == "auto":
        return value
    if meta.get("auto") and t is int and (isinstance(value, bool) or not isinstance(value, int)):
        err(f"'{key}' expected 'auto' or an integer, got {_show(value)}")
        return _BAD
    if t is bool and not isinstance(value, bool):
        err(f"'{key}' expected a boolean (true/false), got {_show(value)}")
        return _BAD
    if t is int and (isinstance(value, bool) or not isinstance(value, int)):
        err(f"'{key}' expected an integer, got {_show(value)}")
        return _BAD
    if t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            err(f"'{key}' expected a float, got {_show(value)}")
            return _BAD
        value = float(value)
    if t is str and not isinstance(value, str):
        err(f"'{key}' expected a string, got {_show(value)}")
        return _BAD
    if t is dict:
        if not isinstance(value, dict):
            err(f"'{key}' expected a table ({{name = value, ...}}), got {_show(value)}")
            return _BAD
        bad = [k for k, v in value.items() if not isinstance(v, str)]
        if bad:
            err(f"'{key}.{bad[0]}' expected a string, got {_show(value[bad[0]])}")
            return _BAD
        return dict(value)
    if t is tuple:
        if not isinstance(value, (list, tuple)):
            err(f"'{key}' expected an array, got {_show(value)}")
            return _BAD
        item_t, items = meta["list_of"], []
        for i, item in enumerate(value):
            if attrs.has(item_t):
                if not isinstance(item, dict):
                    err(f"'{key}[{i}]' expected a table, got {_show(item)}")
                    return _BAD
                items.append(_build(item_t, item, f"{where}.{key}[{i}]", ctx, table=f"{table}.{key}"))
            elif item_t is float:
                if isinstance(item, bool) or not isinstance(item, (int, float)):
                    err(f"'{key}[{i}]' expected a float, got {_show(item)}")
                    return _BAD
                items.append(float(item))
            elif item_t is str:
                if not isinstance(item, str):
                    err(f"'{key}[{i}]' expected a string, got {_show(item)}")
                    return _BAD
                items.append(item)
        value = tuple(items)
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        err(f"'{key}' = {_show(value)} is not allowed{did_you_mean(str(value), [str(c) for c in choices])}",
            "valid: " + ", ".join(str(c) for c in choices))
        return _BAD
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = meta.get("min"), meta.get("max")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            valid = f"{lo} only: {meta['help']}" if lo is not None and lo == hi else \
                f"{'-inf' if lo is None else lo}..{'inf' if hi is None else hi}"
            err(f"'{key}' = {value} is out of range", f"valid: {valid}")
            return _BAD
        if meta.get("even") and value % 2:
            err(f"'{key}' = {value} must be even (DFL forces even channel counts)", f"use {value + 1}")
            return _BAD
    return value


def _schema_fields(cls: type) -> dict[str, attrs.Attribute]:
    return {f.name: f for f in attrs.fields(cls) if f.metadata.get("type") not in (None, "graph")}


def _checked(cls: type, values: dict[str, Any], where: str, ctx: _Ctx, table: str) -> dict[str, Any]:
    """The values that pass `cls`'s schema (errors recorded in `ctx` for the others)."""
    fields = _schema_fields(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            ctx.error(where, f"unknown key '{key}'{did_you_mean(key, fields)}", "valid: " + ", ".join(fields),
                      table=table, key=key)
            continue
        v = _check(fields[key], value, where, ctx, table, key)
        if v is not _BAD:
            kwargs[key] = v
    return kwargs


def _build(cls: type, values: dict[str, Any], where: str, ctx: _Ctx, table: str) -> Any:
    return cls(**_checked(cls, values, where, ctx, table))


# ---------------------------------------------------------------------------------------------------------
# cross-field rules


def parse_archi(archi: str) -> tuple[str, str] | str:
    """'liae-ud' -> ('liae', 'ud'); an error message string when malformed (DFL's rules, docs/dfl.md §1)."""
    form = f"form '<df|liae>[-<opts>]', opts from {', '.join(ARCHI_OPTS)}"
    parts = archi.split("-")
    if parts[0] not in ARCHI_TYPES:
        return f"unknown archi type '{parts[0]}'{did_you_mean(parts[0], ARCHI_TYPES)} ({form})"
    if len(parts) > 2:
        return f"too many '-' in '{archi}' ({form})"
    opts = parts[1] if len(parts) == 2 else ""
    if len(parts) == 2 and not opts:
        return f"empty option list after '-' ({form})"
    bad = [c for c in opts if c not in ARCHI_OPTS]
    if bad:
        return f"unknown option{'s' if len(bad) > 1 else ''} {', '.join(repr(c) for c in bad)} ({form})"
    if len(set(opts)) != len(opts):
        return f"repeated option in '{opts}' ({form})"
    return parts[0], opts


def _cross_checks(r: Recipe, raw: dict[str, Any], ctx: _Ctx) -> Recipe:
    m = r.model
    model_raw = raw.get("model", {})
    if m.graph is None:
        parsed = parse_archi(m.archi)
        if isinstance(parsed, str):
            ctx.error("model", f"archi = '{m.archi}': {parsed}", table="model", key="archi")
            parsed = ("df", "")
        archi_type, opts = parsed
    else:
        archi_type, opts = "graph", ""
    step = 32 if "d" in opts else 16
    if m.resolution % step:
        rounded = max(64, min(640, (m.resolution // step) * step))
        ctx.error("model", f"resolution = {m.resolution} is not a multiple of {step}"
                  + (" (archi option 'd' needs 32)" if step == 32 else ""),
                  f"DFL would round it to {rounded}; write that", table="model", key="resolution")
    if "d_mask_dims" not in model_raw and "d_dims" in model_raw:
        dm = m.d_dims // 3
        dm += dm % 2
        r = attrs.evolve(r, model=attrs.evolve(m, d_mask_dims=max(2, dm)))
    if archi_type == "liae" and r.loss.true_face_power > 0:
        ctx.error("loss", f"true_face_power = {r.loss.true_face_power}: the true-face discriminator exists only "
                  "for df archis (DFL forces 0 for liae)", "set 0 or use a df archi", table="loss",
                  key="true_face_power")
    if r.loss.gan_patch_size and r.loss.gan_patch_size < 3:
        ctx.error("loss", f"gan_patch_size = {r.loss.gan_patch_size} is out of range", "valid: 0 (= resolution//8) "
                  "or 3..640", table="loss", key="gan_patch_size")
    loss_terms = {f.name: f for f in attrs.fields(LossSpec) if f.metadata["type"] is float}
    for i, ramp in enumerate(r.schedule.ramp):
        if ramp.term not in loss_terms:
            ctx.error(f"schedule.ramp[{i}]", f"term '{ramp.term}' is not a [loss] weight"
                      f"{did_you_mean(ramp.term, loss_terms)}", "valid: " + ", ".join(loss_terms))
        else:
            lo, hi = loss_terms[ramp.term].metadata["min"], loss_terms[ramp.term].metadata["max"]
            for key in ("start_value", "end_value"):
                v = getattr(ramp, key)
                if (lo is not None and v < lo) or (hi is not None and v > hi):
                    ctx.error(f"schedule.ramp[{i}]", f"{key} = {v} is out of range for [loss].{ramp.term}",
                              f"valid: {'-inf' if lo is None else lo}..{'inf' if hi is None else hi}")
        if ramp.end < ramp.start:
            ctx.error(f"schedule.ramp[{i}]", f"end = {ramp.end} is before start = {ramp.start}")
    if (r.train.pretrain or r.schedule.pretrain_until) and not r.data.pretrain_faceset:
        ctx.error("data", "pretrain needs a pretrain faceset (DFL's pretraining_data_path)",
                  "set [data].pretrain_faceset")
    if r.train.eval_every and not (r.data.eval_fraction or (r.data.eval_src and r.data.eval_dst)):
        ctx.error("train", f"eval_every = {r.train.eval_every} needs held-out faces of both identities",
                  "set [data].eval_fraction (e.g. 0.1), or [data].eval_src and eval_dst", table="train",
                  key="eval_every")
    if r.loss.latent_distill_weight > 0 and not r.loss.latent_distill_teacher:
        ctx.error("loss", "latent_distill_weight > 0 needs latent_distill_teacher (a checkpoint path)")
    if r.data.identities:
        known = {i.name for i in r.model.graph.identities} if r.model.graph is not None else {"src", "dst"}
        for name in r.data.identities:
            if name in ("src", "dst"):
                ctx.error("data", f"identities.{name}: src and dst come from data.src / data.dst",
                          table="data", key="identities")
            elif name not in known:
                ctx.error("data", f"identities.{name}: the graph has no identity '{name}'"
                          f"{did_you_mean(name, sorted(known))}", "valid: " + ", ".join(sorted(known - {'src', 'dst'})),
                          table="data", key="identities")
    if r.optim.name in ("adam", "adamw") and r.optim.lr_dropout != "n":
        ctx.error("optim", f"lr_dropout = '{r.optim.lr_dropout}': lr dropout is a feature of DFL's optimizers, not of "
                  f"{r.optim.name}", "use name = 'adabelief' or 'rmsprop', or set lr_dropout = 'n'", table="optim",
                  key="lr_dropout")
    if r.optim.name in ("adam", "adamw") and len(r.optim.betas) != 2:
        ctx.error("optim", f"betas = {list(r.optim.betas)}: expected two floats", table="optim", key="betas")
    return r


# ---------------------------------------------------------------------------------------------------------
# overrides


_OVERRIDE_RE = re.compile(r"^(~[A-Za-z_]\w*\.[A-Za-z_]\w*|[A-Za-z_]\w*\.[A-Za-z_]\w*\s*=.*)$", re.DOTALL)


def is_override(text: str) -> bool:
    """Whether a command-line word has the form of an override (`table.key=value` or `~table.key`), so a
    CLI can tell it from a path (`model.pt` is not one: it has no '=')."""
    return bool(_OVERRIDE_RE.match(text))


def split_command_line(words: Iterable[str | None]) -> tuple[str | None, list[str]]:
    """A command line's positional words -> (the recipe path or None, the overrides), in any order:
    `torchsae train optim.lr=1e-4 R` is `torchsae train R optim.lr=1e-4`. More than one word that is not an
    override is an error naming them."""
    words = [w for w in words if w is not None]
    paths = [w for w in words if not is_override(w)]
    if len(paths) > 1:
        raise RecipeErrors([RecipeError(None, None, f"more than one recipe on the command line: {', '.join(paths)}",
                                        "give one recipe; overrides have the form table.key=value or ~table.key")])
    return (paths[0] if paths else None), [w for w in words if is_override(w)]


def evolve(spec: Any, values: dict[str, Any], *, source: str) -> Any:
    """`spec` (one table's spec, e.g. a Recipe's MergeSpec) with `values` ({key: value}) checked against its
    schema exactly as a recipe's values are: RecipeErrors naming `source`, the key, the bad value and what is
    valid. For settings given outside a recipe (a command's flags)."""
    table = next(t for t, cls in TABLES.items() if cls is type(spec))
    ctx = _Ctx(source, None)
    checked = _checked(type(spec), values, table, ctx, table)
    if ctx.errors:
        raise RecipeErrors(ctx.errors)
    return attrs.evolve(spec, **checked)


def resume_value(resume: bool | str | None, overrides: list[str]) -> bool | str | None:
    """The value of a command's ``--resume [CKPT]``. ``--resume model.ae_dims=384`` means "resume the
    latest" followed by an override (argparse's optional CKPT swallowed it): the override is appended back
    to `overrides` and True returned. A word that is an existing path stays the checkpoint."""
    if isinstance(resume, str) and is_override(resume) and not Path(resume).exists():
        overrides.append(resume)
        return True
    return resume


def load_command_line(words: Iterable[str | None], extra_overrides: Iterable[str] = ()) -> Recipe:
    """`load` for a command's positional words (`split_command_line`), then `extra_overrides` (e.g. what a
    command's shorthand flags set). RecipeErrors when no word names a recipe."""
    path, overrides = split_command_line(words)
    if path is None:
        raise RecipeErrors([RecipeError(None, None, "no recipe on the command line (only overrides: "
                                        f"{' '.join(overrides)})", "give the recipe TOML file")])
    return load(path, [*overrides, *extra_overrides])


def _parse_override_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word: a string, type-checked like any other value


def _apply_overrides(doc: dict[str, Any], overrides: Iterable[str], ctx: _Ctx) -> None:
    for ov in overrides:
        remove = ov.startswith("~")
        body = ov[1:] if remove else ov
        if not remove and "=" not in body:
            ctx.errors.append(RecipeError(None, None, f"override '{ov}': expected 'table.key=value' or '~table.key'"))
            continue
        path, _, value = body.partition("=")
        path = path.strip()
        parts = path.split(".")
        if len(parts) != 2 or parts[0] not in TABLES:
            tbl = parts[0]
            ctx.errors.append(RecipeError(None, None, f"override '{ov}': '{path}' does not name a recipe key"
                                          f"{did_you_mean(tbl, TABLES) if tbl not in TABLES else ''}",
                                          "form: table.key, tables: " + ", ".join(TABLES)))
            continue
        table, key = parts
        fields = _schema_fields(TABLES[table])
        if key not in fields:
            ctx.errors.append(RecipeError(None, None, f"override '{ov}': [{table}] has no key '{key}'"
                                          f"{did_you_mean(key, fields)}", "valid: " + ", ".join(fields)))
            continue
        t = doc.setdefault(table, {})
        if remove:
            t.pop(key, None)
        else:
            t[key] = _parse_override_value(value.strip())
            ctx.origin[(table, key)] = f"override '{ov}'"


# ---------------------------------------------------------------------------------------------------------
# public API


def _read_toml(path: Path, ctx: _Ctx) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        ctx.errors.append(RecipeError(str(path), None, f"cannot read recipe: {e.strerror or e}"))
        return None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        ctx.errors.append(RecipeError(str(path), None, f"not valid TOML: {e}"))
        return None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "graph":
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def from_dict(doc: dict[str, Any], *, source: str | None = None, name: str | None = None,
              overrides: Iterable[str] = (), text: str | None = None) -> Recipe:
    """Validate a parsed recipe document (no `extends` resolution) into a Recipe; raises RecipeErrors."""
    ctx = _Ctx(source, text)
    doc = copy.deepcopy(doc)
    _apply_overrides(doc, overrides, ctx)
    return _finish(doc, ctx, source, name)


def _kind_of(doc: dict[str, Any], ctx: _Ctx) -> str:
    kind = doc.get("kind", "saehd")
    if kind not in RECIPE_KINDS:
        ctx.error(None, f"kind = {_show(kind)} is not a recipe kind{did_you_mean(str(kind), RECIPE_KINDS)}",
                  "valid: " + ", ".join(RECIPE_KINDS))
        return "saehd"
    return kind


def _check_kind_tables(doc: dict[str, Any], kind: str, ctx: _Ctx) -> None:
    """Tables (and, for XSeg, [train] keys) that the recipe's kind does not use are errors."""
    allowed = KIND_TABLES[kind] + (("graph",) if kind == "saehd" else ())
    for key in doc:
        if key in TOP_KEYS or key not in ALL_TABLES or key in allowed:
            continue
        if kind == "xseg":
            ctx.error(None, f"[{key}] does not apply to an XSeg recipe (kind = 'xseg')", "valid tables: xseg, train")
        else:
            ctx.error(None, f"[{key}] belongs to an XSeg recipe", "add kind = \"xseg\" at the top, or remove the table")
    if kind == "xseg" and isinstance(doc.get("train"), dict):
        for key in doc["train"]:
            if key not in XSEG_TRAIN_KEYS and key in attrs.fields_dict(TABLES["train"]):
                ctx.error("train", f"'{key}' does not apply to XSeg training", "valid in an XSeg recipe: "
                          + ", ".join(XSEG_TRAIN_KEYS), table="train", key=key)


def _xseg_checks(r: Recipe, ctx: _Ctx) -> None:
    x = r.xseg
    if x.resolution % 64:
        ctx.error("xseg", f"resolution = {x.resolution} is not a multiple of 64 (XSeg pools six times)",
                  f"use {max(64, x.resolution // 64 * 64)} (DFL: 256)", table="xseg", key="resolution")
    if x.pretrain and not x.pretrain_faceset:
        ctx.error("xseg", "pretrain needs a pretrain faceset (DFL's pretraining_data_path)",
                  "set [xseg].pretrain_faceset")
    if not x.pretrain and not x.facesets:
        ctx.error("xseg", "facesets = []: XSeg trains on labelled faces", "name at least one faceset folder",
                  table="xseg", key="facesets")


def _finish(doc: dict[str, Any], ctx: _Ctx, source: str | None, name: str | None) -> Recipe:
    kind = _kind_of(doc, ctx)
    for key, value in doc.items():
        if key in TOP_KEYS:
            continue
        if key not in ALL_TABLES:
            ctx.error(None, f"unknown table [{key}]{did_you_mean(key, ALL_TABLES)}", "valid: " + ", ".join(ALL_TABLES))
        elif not isinstance(value, dict):
            ctx.error(None, f"'{key}' must be a table ([{key}]), got {_show(value)}")
    _check_kind_tables(doc, kind, ctx)
    built: dict[str, Any] = {}
    for table, cls in TABLES.items():
        values = doc.get(table, {})
        built[table] = _build(cls, values if isinstance(values, dict) else {}, table, ctx, table)
    if isinstance(doc.get("graph"), dict):
        graph, gerrs = parse_graph_table(doc["graph"], source)
        ctx.errors.extend(gerrs)
        if graph is not None:
            built["model"] = attrs.evolve(built["model"], graph=graph)
    stem = name or (Path(source).stem if source else "recipe")
    recipe = Recipe(name=stem, source=source, kind=kind, **built)
    if kind == "xseg":
        _xseg_checks(recipe, ctx)
    else:
        recipe = _cross_checks(recipe, doc, ctx)
    if ctx.errors:
        raise RecipeErrors(ctx.errors)
    return recipe


def load(path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """Read, merge (`extends`), override and validate a recipe file. Raises RecipeErrors listing every problem."""
    path = Path(path)
    source = str(path)
    ctx = _Ctx(source, None)
    doc = _read_toml(path, ctx)
    if doc is None:
        raise RecipeErrors(ctx.errors)
    ctx.text = path.read_text(encoding="utf-8")
    base_name = doc.get("extends")
    if base_name is not None:
        if not isinstance(base_name, str):
            ctx.error(None, f"extends = {_show(base_name)}: expected a file name (string)")
            raise RecipeErrors(ctx.errors)
        base_path = (path.parent / base_name).resolve()
        bctx = _Ctx(str(base_path), None)
        base = _read_toml(base_path, bctx)
        if base is None:
            raise RecipeErrors([RecipeError(source, None, f"extends = '{base_name}': {e.message}") for e in bctx.errors])
        if "extends" in base:
            raise RecipeErrors([RecipeError(source, None, f"extends = '{base_name}': the base recipe extends "
                                            f"'{base['extends']}' itself; only one level is allowed",
                                            "copy the base's tables instead")])
        doc = _merge(base, {k: v for k, v in doc.items() if k != "extends"})
    _apply_overrides(doc, overrides, ctx)
    return _finish(doc, ctx, source, path.stem)


def loads(text: str, *, source: str | None = None, overrides: Iterable[str] = ()) -> Recipe:
    """Validate recipe TOML text (no `extends`)."""
    ctx = _Ctx(source, text)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RecipeErrors([RecipeError(source, None, f"not valid TOML: {e}")]) from None
    if "extends" in doc:
        raise RecipeErrors([RecipeError(source, None, "extends needs a file: use engine.recipe.load(path)")])
    _apply_overrides(doc, overrides, ctx)
    return _finish(doc, ctx, source, Path(source).stem if source else None)


def to_dict(recipe: Recipe) -> dict[str, Any]:
    """The fully resolved recipe as plain TOML-able data (every key of its kind, defaults included)."""
    out: dict[str, Any] = {}
    if recipe.kind != "saehd":
        out["kind"] = recipe.kind
    for table in KIND_TABLES[recipe.kind]:
        spec = getattr(recipe, table)
        t: dict[str, Any] = {}
        for f in attrs.fields(type(spec)):
            if f.metadata.get("type") in (None, "graph"):
                continue
            if recipe.kind == "xseg" and table == "train" and f.name not in XSEG_TRAIN_KEYS:
                continue
            v = getattr(spec, f.name)
            if isinstance(v, tuple):
                v = [attrs.asdict(x) if attrs.has(type(x)) else x for x in v]
            elif isinstance(v, dict):
                v = dict(v)
            t[f.name] = v
        out[table] = t
    if recipe.model.graph is not None:
        out["graph"] = graph_to_dict(recipe.model.graph)
    return out


def dumps(recipe: Recipe) -> str:
    """The resolved recipe as TOML; `loads(dumps(r))` gives back an equal Recipe (checkpoints store this)."""
    header = f"# resolved recipe '{recipe.name}'" + (f" (from {recipe.source})" if recipe.source else "") + "\n"
    return header + toml_dumps(to_dict(recipe))


def diff(a: Recipe, b: Recipe) -> list[str]:
    """Key paths whose values differ between two recipes ('model.ae_dims: 256 != 512')."""
    da, db = to_dict(a), to_dict(b)
    out = []
    for table in sorted(set(da) | set(db)):
        if table == "kind":  # the one top-level scalar; absent means SAEHD
            ka, kb = da.get("kind", "saehd"), db.get("kind", "saehd")
            if ka != kb:
                out.append(f"kind: {ka!r} != {kb!r}")
            continue
        ta, tb = da.get(table, {}), db.get(table, {})
        for k in sorted(set(ta) | set(tb)):
            if ta.get(k) != tb.get(k):
                out.append(f"{table}.{k}: {ta.get(k)!r} != {tb.get(k)!r}")
    return out


__all__ = ["load", "loads", "from_dict", "dumps", "to_dict", "diff", "parse_archi", "is_override",
           "split_command_line", "load_command_line", "resume_value", "evolve", "ModelSpec"]
