"""Face types: DFL's `facelib/FaceType.py` names, ids and crop padding (docs/dfl.md §6.3).

A face type says how much of the head an aligned crop shows. DFL stores the long name in DFLJPG
metadata (`'whole_face'`), SAEHD's options use the short name (`'wf'`), and DFL's enum uses the int id
(4). `FaceType.parse` accepts any of the three, so recipes, DFLJPG files and DFL's pickles all map to
one value.

| member        | id  | long name            | short | padding p  | remove_align |
|---------------|-----|----------------------|-------|------------|--------------|
| HALF          | 0   | half_face            | h     | 0.0        | no           |
| MID_FULL      | 1   | midfull_face         | mf    | 0.0675     | no           |
| FULL          | 2   | full_face            | f     | 0.2109375  | no           |
| FULL_NO_ALIGN | 3   | full_face_no_align   | -     | 0.2109375  | yes          |
| WHOLE_FACE    | 4   | whole_face           | wf    | 0.40       | no           |
| HEAD          | 10  | head                 | head  | 0.70       | no           |
| HEAD_NO_ALIGN | 20  | head_no_align        | -     | 0.70       | yes          |
| MARK_ONLY     | 100 | mark_only            | -     | (no crop)  |              |

The crop side in units of DFL's mean-face square is `1 + 2·√2·p` (§6.3).
"""

from __future__ import annotations

import enum

from engine.errors import DataError, did_you_mean

__all__ = ["FaceType", "FACE_TYPE_PADDING"]


class FaceType(enum.IntEnum):
    """DFL's FaceType enum (same ints, so DFL's pickled ids map 1:1)."""

    HALF = 0
    MID_FULL = 1
    FULL = 2
    FULL_NO_ALIGN = 3
    WHOLE_FACE = 4
    HEAD = 10
    HEAD_NO_ALIGN = 20
    MARK_ONLY = 100

    @property
    def long_name(self) -> str:
        """DFL's string name as stored in DFLJPG `face_type` ('whole_face', ...)."""
        return _LONG[self]

    @property
    def short_name(self) -> str | None:
        """SAEHD option name ('h', 'mf', 'f', 'wf', 'head'); None for types SAEHD cannot train."""
        return _SHORT.get(self)

    @classmethod
    def parse(cls, value: "FaceType | str | int", where: str = "face_type") -> "FaceType":
        """FaceType from a member, a long name, a short name or DFL's int id.

        Raises DataError naming `where`, the bad value and the valid names.
        """
        if isinstance(value, FaceType):
            return value
        if isinstance(value, (int,)) and not isinstance(value, bool):
            try:
                return cls(int(value))
            except ValueError:
                pass
        elif isinstance(value, str):
            key = value.strip().lower()
            if key in _BY_NAME:
                return _BY_NAME[key]
        valid = sorted(_BY_NAME)
        raise DataError(
            f"{where}: unknown face type {value!r}{did_you_mean(str(value), valid)} "
            f"(valid: {', '.join(valid)} or DFL ids {', '.join(str(int(m)) for m in cls)})"
        )


_LONG = {
    FaceType.HALF: "half_face",
    FaceType.MID_FULL: "midfull_face",
    FaceType.FULL: "full_face",
    FaceType.FULL_NO_ALIGN: "full_face_no_align",
    FaceType.WHOLE_FACE: "whole_face",
    FaceType.HEAD: "head",
    FaceType.HEAD_NO_ALIGN: "head_no_align",
    FaceType.MARK_ONLY: "mark_only",
}
_SHORT = {
    FaceType.HALF: "h",
    FaceType.MID_FULL: "mf",
    FaceType.FULL: "f",
    FaceType.WHOLE_FACE: "wf",
    FaceType.HEAD: "head",
}
_BY_NAME: dict[str, FaceType] = {**{v: k for k, v in _LONG.items()}, **{v: k for k, v in _SHORT.items()}}

# (padding p, remove_align) per face type, docs/dfl.md §6.3 (DFL's FaceType_to_padding_remove_align).
FACE_TYPE_PADDING: dict[FaceType, tuple[float, bool]] = {
    FaceType.HALF: (0.0, False),
    FaceType.MID_FULL: (0.0675, False),
    FaceType.FULL: (0.2109375, False),
    FaceType.FULL_NO_ALIGN: (0.2109375, True),
    FaceType.WHOLE_FACE: (0.40, False),
    FaceType.HEAD: (0.70, False),
    FaceType.HEAD_NO_ALIGN: (0.70, True),
}
