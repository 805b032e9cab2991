"""The merger's settings: the recipe's [merge] table (`engine.recipe.specs.MergeSpec`: DFL's
`MergerConfigMasked` options with DFL's defaults and ranges, docs/dfl.md §10.3 — the one schema) plus the face type
of the model's crops, which comes with the model, not from the table.

Modes are stored by name; DFL defines its mask, colour-transfer and sharpen algorithms by id, and the merger
(engine.merge.face) follows DFL's code by those ids: `mask_mode_id` (0 full .. 9
learned-prd*learned-dst*XSeg-prd*XSeg-dst), `color_transfer_id` (0 none, 1 rct .. 8 mix-m),
`sharpen_mode_id` (0 none, 1 box, 2 gaussian). A command's flags become a MergeSpec through `with_flags`,
checked by the same schema as the recipe (modes also by DFL id, as DFL's prompts take them).

Deviation from DFL: no interactive prompts; every value comes from the recipe or a flag and an invalid
value is an error (DFL silently re-prompts or clamps).
"""

from __future__ import annotations

from typing import Any

import attrs

from engine.errors import TorchSAEError
from engine.faces.facetypes import FaceType
from engine.recipe import evolve
from engine.recipe.specs import MASK_MODES, MERGE_CT, MERGE_MODES, MergeSpec

__all__ = ["MODES", "MASK_MODES", "CT_MODES", "SHARPEN_MODES", "XSEG_MASK_MODES", "mask_mode_id",
           "color_transfer_id", "sharpen_mode_id", "needs_xseg", "merge_face_type", "with_flags", "settings_line"]

# DFL's mode_dict / mask_mode_dict / ctm_dict / sharpen_dict, by id (index = DFL's id), as [merge] declares them
MODES: tuple[str, ...] = MERGE_MODES
CT_MODES: tuple[str, ...] = MERGE_CT
SHARPEN_MODES: tuple[str, ...] = attrs.fields(MergeSpec).sharpen_mode.metadata["choices"]
XSEG_MASK_MODES = frozenset({6, 7, 8, 9})
_BY_ID = {"mode": MODES, "mask_mode": MASK_MODES, "color_transfer": CT_MODES, "sharpen_mode": SHARPEN_MODES}


def mask_mode_id(spec: MergeSpec) -> int:
    return MASK_MODES.index(spec.mask_mode)


def color_transfer_id(spec: MergeSpec) -> int:
    return CT_MODES.index(spec.color_transfer)


def sharpen_mode_id(spec: MergeSpec) -> int:
    return SHARPEN_MODES.index(spec.sharpen_mode)


def needs_xseg(spec: MergeSpec) -> bool:
    """Mask modes 6..9 run the XSeg network."""
    return mask_mode_id(spec) in XSEG_MASK_MODES


def merge_face_type(face_type: FaceType | str | int, where: str = "merge face_type") -> FaceType:
    """The crop's face type (any FaceType name or id); mark_only has no crop to merge."""
    ft = FaceType.parse(face_type, where)
    if ft == FaceType.MARK_ONLY:
        raise TorchSAEError(f"{where} mark_only has no face crop (valid: h, mf, f, wf, head)")
    return ft


def _by_name(key: str, value: Any) -> Any:
    """A mode given by DFL id (3, "3") or in another case ("mkl-M") -> its name; anything else as given (the
    schema reports it)."""
    names = _BY_ID.get(key)
    if names is None or isinstance(value, bool):
        return value
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        i = int(value)
        return names[i] if 0 <= i < len(names) else str(value)
    if isinstance(value, str):
        return {n.lower(): n for n in names}.get(value.lower(), value)
    return value


def with_flags(spec: MergeSpec, flags: dict[str, Any], source: str = "merge flags") -> MergeSpec:
    """`spec` with the flags given ({[merge] key: value}; None = not given), checked by [merge]'s schema
    (RecipeErrors naming the key, the bad value and what is valid)."""
    return evolve(spec, {k: _by_name(k, v) for k, v in flags.items() if v is not None}, source=source)


def settings_line(spec: MergeSpec, face_type: FaceType) -> str:
    """One line for logs: every setting, names instead of ids."""
    return (f"mode {spec.mode}, mask {spec.mask_mode}, erode {spec.erode}, blur {spec.blur}, ct "
            f"{spec.color_transfer}, face scale {spec.output_face_scale}, motion blur {spec.motion_blur_power}, "
            f"sharpen {spec.sharpen_mode} {spec.blursharpen_amount}, denoise {spec.image_denoise_power}, bicubic "
            f"degrade {spec.bicubic_degrade_power}, colour degrade {spec.color_degrade_power}, hist-match "
            f"{'masked' if spec.masked_hist_match else 'whole'} @{spec.hist_match_threshold}, face type "
            f"{face_type.long_name}")
