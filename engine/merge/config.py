"""Merger settings: DFL's `MergerConfigMasked` (spec §10.3) as one frozen value, built from the recipe's
[merge] table (engine.recipe.specs.MergeSpec) and command-line overrides.

Names follow DFL's config attributes; modes are stored by name and exposed by DFL's ids where the
algorithm is defined by id (mask_mode 0..9, color_transfer_mode 0..8, sharpen_mode 0..2).

| field                  | DFL default | range / values                                            |
|------------------------|-------------|-----------------------------------------------------------|
| mode                   | overlay     | original overlay hist-match seamless seamless-hist-match raw-rgb raw-predict |
| mask_mode              | 4           | 0 full .. 9 learned-prd*learned-dst*XSeg-prd*XSeg-dst     |
| erode_mask_modifier    | 0           | -400..400 (px at 4× model resolution; < 0 dilates)       |
| blur_mask_modifier     | 0           | 0..400 (px at 4× model resolution)                        |
| motion_blur_power      | 0           | 0..100                                                    |
| output_face_scale      | 0           | -50..50 (%)                                               |
| color_transfer_mode    | 1 (rct)     | 0 none, rct, lct, mkl, mkl-m, idt, idt-m, sot-m, mix-m    |
| sharpen_mode           | 0           | 0 none, 1 box, 2 gaussian                                 |
| blursharpen_amount     | 0           | -100..100                                                 |
| super_resolution_power | 0           | 0 only (DFL's FaceEnhancer weights are not available)     |
| image_denoise_power    | 0           | 0..500                                                    |
| bicubic_degrade_power  | 0           | 0..100                                                    |
| color_degrade_power    | 0           | 0..100                                                    |
| masked_hist_match      | True        |                                                           |
| hist_match_threshold   | 238         | 0..255 (DFL's constructor default; its prompt offers 255) |

Deviation from DFL: no interactive prompts; every value comes from the recipe or a flag and an invalid
value is an error (DFL silently re-prompts or clamps).
"""

from __future__ import annotations

from typing import Any

import attrs

from engine.errors import TorchSAEError, did_you_mean
from engine.faces.facetypes import FaceType
from engine.recipe.specs import MASK_MODES, MERGE_CT, MERGE_MODES, MergeSpec

__all__ = ["MergeConfig", "MODES", "MASK_MODES", "CT_MODES", "SHARPEN_MODES", "XSEG_MASK_MODES", "config_from_spec"]

# DFL's mode_dict / mask_mode_dict / ctm_dict / sharpen_dict, by id (index = DFL's id), as the [merge] schema
# declares them
MODES: tuple[str, ...] = MERGE_MODES
CT_MODES: tuple[str, ...] = MERGE_CT
SHARPEN_MODES: tuple[str, ...] = attrs.fields(MergeSpec).sharpen_mode.metadata["choices"]
XSEG_MASK_MODES = frozenset({6, 7, 8, 9})

_RANGES = {
    "erode_mask_modifier": (-400, 400),
    "blur_mask_modifier": (0, 400),
    "motion_blur_power": (0, 100),
    "output_face_scale": (-50, 50),
    "blursharpen_amount": (-100, 100),
    "super_resolution_power": (0, 0),
    "image_denoise_power": (0, 500),
    "bicubic_degrade_power": (0, 100),
    "color_degrade_power": (0, 100),
    "hist_match_threshold": (0, 255),
}


def _choice(value: Any, names: tuple[str, ...], key: str) -> str:
    """A mode given by DFL id (int) or name -> its name; TorchSAEError otherwise."""
    if isinstance(value, bool):
        pass
    elif isinstance(value, int) and 0 <= value < len(names):
        return names[value]
    elif isinstance(value, str):
        if value in names:
            return value
        low = {n.lower(): n for n in names}
        if value.lower() in low:
            return low[value.lower()]
        if value.strip().isdigit() and 0 <= int(value) < len(names):
            return names[int(value)]
    raise TorchSAEError(f"merge {key} = {value!r}: unknown{did_you_mean(str(value), names)} "
                        f"(valid: {', '.join(f'{i} {n}' for i, n in enumerate(names))})")


@attrs.frozen(kw_only=True)
class MergeConfig:
    """One merger configuration (see the module table). Build with `MergeConfig.make(**values)`, which
    validates; the plain constructor trusts its inputs."""

    face_type: FaceType = FaceType.FULL
    mode: str = "overlay"
    mask_mode: int = 4
    erode_mask_modifier: int = 0
    blur_mask_modifier: int = 0
    motion_blur_power: int = 0
    output_face_scale: int = 0
    color_transfer_mode: int = 1
    sharpen_mode: int = 0
    blursharpen_amount: int = 0
    super_resolution_power: int = 0
    image_denoise_power: int = 0
    bicubic_degrade_power: int = 0
    color_degrade_power: int = 0
    masked_hist_match: bool = True
    hist_match_threshold: int = 238

    @classmethod
    def make(cls, **values: Any) -> "MergeConfig":
        """Validated config: modes by DFL id or name, ints within DFL's ranges, face_type by any FaceType
        name/id. Raises TorchSAEError naming the key, the bad value and what is valid."""
        fields = attrs.fields_dict(cls)
        unknown = [k for k in values if k not in fields]
        if unknown:
            k = unknown[0]
            raise TorchSAEError(f"merge setting {k!r} is not known{did_you_mean(k, fields)} (valid: {', '.join(fields)})")
        v = dict(values)
        if "face_type" in v:
            v["face_type"] = FaceType.parse(v["face_type"], "merge face_type")
            if v["face_type"] == FaceType.MARK_ONLY:
                raise TorchSAEError("merge face_type mark_only has no face crop (valid: h, mf, f, wf, head)")
        if "mode" in v:
            v["mode"] = _choice(v["mode"], MODES, "mode")
        if "mask_mode" in v:
            v["mask_mode"] = MASK_MODES.index(_choice(v["mask_mode"], MASK_MODES, "mask_mode"))
        if "color_transfer_mode" in v:
            ct = v["color_transfer_mode"]
            v["color_transfer_mode"] = CT_MODES.index(_choice(0 if ct is None else ct, CT_MODES, "color_transfer"))
        if "sharpen_mode" in v:
            v["sharpen_mode"] = SHARPEN_MODES.index(_choice(v["sharpen_mode"], SHARPEN_MODES, "sharpen_mode"))
        if "masked_hist_match" in v:
            if not isinstance(v["masked_hist_match"], bool):
                raise TorchSAEError(f"merge masked_hist_match = {v['masked_hist_match']!r}: expected true or false")
        for key, (lo, hi) in _RANGES.items():
            if key not in v:
                continue
            x = v[key]
            if isinstance(x, bool) or not isinstance(x, int):
                raise TorchSAEError(f"merge {key} = {x!r}: expected an integer in {lo}..{hi}")
            if not lo <= x <= hi:
                if key == "super_resolution_power":
                    raise TorchSAEError(f"merge super_resolution_power = {x}: not available — DFL's super resolution "
                                        "runs its FaceEnhancer network, whose trained weights TorchSAE does not have; "
                                        "only 0 is valid")
                raise TorchSAEError(f"merge {key} = {x}: out of range (valid: {lo}..{hi})")
        return cls(**v)

    @property
    def mask_mode_name(self) -> str:
        return MASK_MODES[self.mask_mode]

    @property
    def color_transfer_name(self) -> str:
        return CT_MODES[self.color_transfer_mode]

    @property
    def needs_xseg(self) -> bool:
        """Mask modes 6..9 run the XSeg network."""
        return self.mask_mode in XSEG_MASK_MODES

    def summary(self) -> str:
        """One line for logs: every setting, names instead of ids."""
        return (f"mode {self.mode}, mask {self.mask_mode_name}, erode {self.erode_mask_modifier}, blur "
                f"{self.blur_mask_modifier}, ct {self.color_transfer_name}, face scale {self.output_face_scale}, "
                f"motion blur {self.motion_blur_power}, sharpen {SHARPEN_MODES[self.sharpen_mode]} "
                f"{self.blursharpen_amount}, denoise {self.image_denoise_power}, bicubic degrade "
                f"{self.bicubic_degrade_power}, colour degrade {self.color_degrade_power}, hist-match "
                f"{'masked' if self.masked_hist_match else 'whole'} @{self.hist_match_threshold}, face type "
                f"{self.face_type.long_name}")


# MergeSpec field -> MergeConfig field (names differ where the recipe uses a shorter one)
SPEC_TO_CONFIG = {
    "mode": "mode",
    "mask_mode": "mask_mode",
    "erode": "erode_mask_modifier",
    "blur": "blur_mask_modifier",
    "motion_blur_power": "motion_blur_power",
    "output_face_scale": "output_face_scale",
    "color_transfer": "color_transfer_mode",
    "sharpen_mode": "sharpen_mode",
    "blursharpen_amount": "blursharpen_amount",
    "super_resolution_power": "super_resolution_power",
    "image_denoise_power": "image_denoise_power",
    "bicubic_degrade_power": "bicubic_degrade_power",
    "color_degrade_power": "color_degrade_power",
    "masked_hist_match": "masked_hist_match",
    "hist_match_threshold": "hist_match_threshold",
}


def config_from_spec(spec: Any, face_type: FaceType | str | int, overrides: dict[str, Any] | None = None) -> MergeConfig:
    """MergeConfig from a recipe's MergeSpec (names as in [merge]) plus `overrides` (MergeSpec names, e.g.
    {'erode': 20}; None values are ignored), for a model of `face_type`."""
    values: dict[str, Any] = {}
    for sk, ck in SPEC_TO_CONFIG.items():
        values[ck] = getattr(spec, sk)
    for k, x in (overrides or {}).items():
        if x is None:
            continue
        if k not in SPEC_TO_CONFIG:
            raise TorchSAEError(f"merge override {k!r} is not a [merge] key{did_you_mean(k, SPEC_TO_CONFIG)}")
        values[SPEC_TO_CONFIG[k]] = x
    values["face_type"] = face_type
    return MergeConfig.make(**values)
