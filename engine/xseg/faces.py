"""The faces of an XSeg faceset: DFLJPG files (or a packed faceset) with their polygons, read strictly.

    faces = scan("workspace/data_dst/aligned")             # [XSegFace], sorted by file name
    labelled, skipped = labelled_faces(faces)              # DFL's choice of training faces

XSeg labels live in DFLJPG metadata, so every image of a folder must be a DFLJPG: a file that is not (a
plain JPEG, a PNG, a truncated file) raises DataError naming it — unlike SAEHD's loader, which skips such
files, because a labeller or `apply` that silently ignored a face would lose work. Malformed polygons raise
DataError naming the file and polygon (engine.xseg.polys). Packed facesets (DFL's faceset.pak, TorchSAE's
faceset.tspak) are read through engine.faces.faceset for training; they cannot be written to.

Training faces (DFL `SegmentedSampleFilterSubprocessor`, docs/dfl.md §5.7): faces whose polygons have at least
one point; if no face of any faceset has polygons, the faces with a stored xseg_mask instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs

from engine.faces import dfljpg, pak
from engine.faces.face_sample import FaceSample, image_files, sample_from_meta
from engine.faces.faceset import load_faceset
from engine.errors import DataError, UnsafeFileError
from engine.xseg.polys import Poly, parse_polys, point_count

__all__ = ["XSegFace", "scan", "scan_files", "read_dfljpg", "labelled_faces", "is_packed"]

log = logging.getLogger("torchsae.xseg")


@attrs.frozen(eq=False)
class XSegFace:
    """One face: its FaceSample (pixels, landmarks, face type, xseg mask) and its polygons."""

    sample: FaceSample
    polys: tuple[Poly, ...]

    @property
    def name(self) -> str:
        return self.sample.name

    @property
    def labelled(self) -> bool:
        return point_count(self.polys) > 0


def read_dfljpg(path: str | Path) -> dfljpg.DFLJPG:
    """The DFLJPG at `path`; DataError naming the file when it is not one (not a JPEG, or no DFL data)."""
    p = Path(path)
    try:
        info = dfljpg.load(p)
    except UnsafeFileError:
        raise
    except DataError as e:
        raise DataError(f"{p}: not a DFLJPG ({str(e).split(': ', 1)[-1]}); XSeg labels and masks live in DFL's "
                        "aligned JPEGs — move other files out of the faceset") from None
    if info is None:
        raise DataError(f"{p}: not a DFLJPG (a JPEG without DFL metadata); XSeg labels and masks live in DFL's "
                        "aligned JPEGs — move other files out of the faceset")
    return info


def _face_from(info: dfljpg.DFLJPG, name: str) -> XSegFace:
    polys = parse_polys(info.meta.get("seg_ie_polys"), info.path)
    sample = sample_from_meta(info.meta, name=name, path=info.path, shape=info.shape, encoding="jpeg")
    return XSegFace(sample, tuple(polys))


def scan_files(files: Iterable[Path]) -> list[XSegFace]:
    """XSegFaces of the given DFLJPG files (DataError on the first file that is not one)."""
    out = []
    for p in files:
        info = read_dfljpg(p)
        try:
            out.append(_face_from(info, Path(p).name))
        except DataError as e:
            msg = str(e)
            raise DataError(msg if str(p) in msg else f"{p}: {msg}") from None
    return out


def is_packed(path: Path) -> bool:
    """A faceset.pak / faceset.tspak file, or a folder holding one (read through engine.faces.faceset)."""
    return path.is_file() or (path / pak.TSPAK_FILENAME).is_file() or (path / pak.DFL_PAK_FILENAME).is_file()


def scan(path: str | Path) -> list[XSegFace]:
    """Every face of a faceset folder (strict, see the module doc) or packed faceset, in file-name order."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: faceset not found (expected a folder of DFL aligned faces)")
    if is_packed(p):
        return [XSegFace(s, tuple(parse_polys(s.seg_ie_polys, f"{p}/{s.name}"))) for s in load_faceset(p)]
    files = image_files(p)
    if not files:
        raise DataError(f"{p}: no .jpg faces in this folder")
    return scan_files(files)


def labelled_faces(faces: Sequence[XSegFace], where: str = "facesets") -> tuple[list[XSegFace], int, str]:
    """(training faces, how many faces were skipped, "polygons" | "xseg_mask") as DFL chooses them.

    DataError naming `where` when no face has polygons or a stored mask."""
    with_polys = [f for f in faces if f.labelled]
    if with_polys:
        return with_polys, len(faces) - len(with_polys), "polygons"
    with_masks = [f for f in faces if f.sample.has_xseg_mask]
    if with_masks:
        return with_masks, len(faces) - len(with_masks), "xseg_mask"
    raise DataError(f"{where}: none of the {len(faces)} faces has XSeg polygons or an xseg_mask to train on; label "
                    "some with `torchsae xseg label DIR`, DFL's XSeg editor, or `torchsae xseg labels import`")
