"""XSeg labels to and from files, so polygons can be made or fixed without DFL's Qt editor.

    export_labels(DIR, "labels.json")                 # TorchSAE's JSON (below)
    export_labels(DIR, "labels.coco.json", fmt="coco")
    import_labels(DIR, "labels.json")                 # format detected; writes seg_ie_polys into the DFLJPGs

TorchSAE JSON (coordinates in aligned-image pixels, x right, y down, as DFL stores them):

    {"format": "torchsae-xseg-labels-1",
     "faces": {"00001_0.jpg": {"width": 512, "height": 512,
                               "polygons": [{"type": "include", "points": [[x, y], ...]},
                                            {"type": "exclude", "points": [...]}]}}}

COCO (instance segmentation, polygon form): `images` (id, file_name, width, height), `annotations`
(image_id, category_id, `segmentation` = [[x1, y1, x2, y2, ...], ...]), `categories`. Export writes
categories 1 "include" and 2 "exclude"; import takes a category named "exclude" (any case) as exclude and
every other category as include (a labelling tool's "face"/"person" classes are includes). Polygons keep
their order (annotation order for COCO); DFL draws includes first, then excludes (engine.xseg.polys).

Import replaces the labels of every face the file names (an empty polygon list removes them) and leaves the
other faces alone; it checks the whole file first — unknown file names, malformed polygons, RLE
segmentations, faces that are not DFLJPGs raise DataError naming them before any face is written — backs
up the metadata (engine.xseg.apply), then writes each face atomically.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tqdm import tqdm

from engine.errors import DataError
from engine.fileio import write_atomic
from engine.xseg.apply import backup_metadata, list_faces, set_meta_key
from engine.xseg.polys import EXCLUDE, INCLUDE, Poly, parse_polys, to_dfl, type_from_name, type_name

__all__ = ["LABELS_FORMAT", "export_labels", "import_labels", "read_label_file", "to_json_doc", "to_coco_doc",
           "polygons_from_json"]

log = logging.getLogger("torchsae.xseg")

LABELS_FORMAT = "torchsae-xseg-labels-1"


def to_json_doc(faces: dict[str, tuple[tuple[int, int], list[Poly]]]) -> dict:
    """{name: ((h, w), polys)} -> TorchSAE's label document."""
    return {"format": LABELS_FORMAT, "faces": {
        name: {"width": w, "height": h,
               "polygons": [{"type": type_name(p.type), "points": p.pts.astype(float).tolist()} for p in polys]}
        for name, ((h, w), polys) in faces.items()}}


def to_coco_doc(faces: dict[str, tuple[tuple[int, int], list[Poly]]]) -> dict:
    """{name: ((h, w), polys)} -> a COCO document (categories 1 include, 2 exclude)."""
    images, anns = [], []
    for img_id, (name, ((h, w), polys)) in enumerate(faces.items(), 1):
        images.append({"id": img_id, "file_name": name, "width": w, "height": h})
        for p in polys:
            if not len(p.pts):
                continue
            xs, ys = p.pts[:, 0].astype(float), p.pts[:, 1].astype(float)
            area = 0.5 * abs(float((xs * (list(ys[1:]) + [ys[0]])).sum() - (ys * (list(xs[1:]) + [xs[0]])).sum()))
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": 1 if p.type == INCLUDE else 2,
                         "segmentation": [p.pts.astype(float).reshape(-1).tolist()], "iscrowd": 0, "area": area,
                         "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min()), float(ys.max() - ys.min())]})
    return {"info": {"description": "XSeg labels (TorchSAE)"}, "images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "include"}, {"id": 2, "name": "exclude"}]}


def export_labels(folder: str | Path, out: str | Path, *, fmt: str = "json", all_faces: bool = False) -> dict:
    """Write the polygons of a faceset to `out` (faces without polygons only with `all_faces`)."""
    if fmt not in ("json", "coco"):
        raise DataError(f"labels format {fmt!r}: valid: json, coco")
    files, infos = list_faces(folder)
    faces = {}
    for p, info in zip(files, infos):
        polys = parse_polys(info.meta.get("seg_ie_polys"), str(p))
        if polys or all_faces:
            faces[p.name] = ((info.shape[0], info.shape[1]), polys)
    doc = to_json_doc(faces) if fmt == "json" else to_coco_doc(faces)
    write_atomic(out, json.dumps(doc, indent=1))
    return {"out": str(out), "format": fmt, "faces": len(faces), "polygons": sum(len(v[1]) for v in faces.values())}


def polygons_from_json(entry: Any, where: str) -> list[Poly]:
    """One face's ``{"polygons": [{"type": "include"|"exclude", "points": [[x, y], ...]}, ...]}`` (the label
    file's entries, and what the browser labeller sends) -> polygons; DataError naming `where` and the
    polygon for anything malformed."""
    items = entry.get("polygons") if isinstance(entry, dict) else None
    if not isinstance(items, list):
        raise DataError(f"{where}: expected {{'polygons': [...]}}")
    raw = []
    for i, poly in enumerate(items):
        if not isinstance(poly, dict) or "points" not in poly:
            raise DataError(f"{where}: polygon {i} must be {{'type': 'include'|'exclude', 'points': [[x, y], ...]}}")
        raw.append({"type": type_from_name(poly.get("type"), f"{where} polygon {i}"), "pts": poly["points"]})
    return parse_polys({"polys": raw}, where)


def _polys_from_json(doc: dict, where: str) -> dict[str, list[Poly]]:
    faces = doc.get("faces")
    if not isinstance(faces, dict):
        raise DataError(f"{where}: expected a 'faces' table of file name -> polygons")
    return {name: polygons_from_json(entry, f"{where}: faces['{name}']") for name, entry in faces.items()}


def _polys_from_coco(doc: dict, where: str) -> dict[str, list[Poly]]:
    try:
        images = {int(im["id"]): str(im["file_name"]) for im in doc["images"]}
        cats = {int(c["id"]): str(c.get("name", "")) for c in doc.get("categories", [])}
        anns = sorted(doc["annotations"], key=lambda a: int(a.get("id", 0)))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{where}: not a COCO document (images with id/file_name, annotations) ({e})") from None
    out: dict[str, list[Poly]] = {Path(name).name: [] for name in images.values()}
    for a in anns:
        w = f"{where}: annotation {a.get('id')}"
        name = images.get(int(a.get("image_id", -1)))
        if name is None:
            raise DataError(f"{w}: image_id {a.get('image_id')} is not in 'images'")
        seg = a.get("segmentation")
        if not isinstance(seg, list):
            raise DataError(f"{w}: segmentation is {type(seg).__name__} (RLE); only polygon segmentations can become "
                            "XSeg polygons")
        t = EXCLUDE if cats.get(int(a.get("category_id", 0)), "").strip().lower() == "exclude" else INCLUDE
        for k, flat in enumerate(seg):
            if not isinstance(flat, list) or len(flat) % 2:
                raise DataError(f"{w}: segmentation {k} must be a flat list [x1, y1, x2, y2, ...] of even length")
            (poly,) = parse_polys({"polys": [{"type": t, "pts": [flat[j:j + 2] for j in range(0, len(flat), 2)]}]}, w)
            out[Path(name).name].append(poly)
    return out


def read_label_file(path: str | Path) -> tuple[dict[str, list[Poly]], str]:
    """({file name: polygons}, "json" | "coco") from a label file; DataError naming what is wrong."""
    path = Path(path)
    try:
        doc: Any = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if isinstance(doc, dict) and "images" in doc and "annotations" in doc:
        return _polys_from_coco(doc, str(path)), "coco"
    if isinstance(doc, dict) and doc.get("format") == LABELS_FORMAT:
        return _polys_from_json(doc, str(path)), "json"
    raise DataError(f"{path}: neither TorchSAE labels (format '{LABELS_FORMAT}') nor a COCO document")


def import_labels(folder: str | Path, path: str | Path, *, progress: bool = True) -> dict:
    """Write the polygons of a label file into the faceset's DFLJPGs (module doc)."""
    folder = Path(folder)
    labels, fmt = read_label_file(path)
    files, _infos = list_faces(folder)
    by_name = {p.name: p for p in files}
    unknown = [n for n in labels if n not in by_name]
    if unknown:
        raise DataError(f"{path}: {len(unknown)} face(s) not in {folder}: {', '.join(unknown[:5])}"
                        f"{' ...' if len(unknown) > 5 else ''}")
    targets = [by_name[n] for n in labels]
    backup = str(backup_metadata(folder, targets, "labels-import")) if targets else None
    it = targets
    if progress and targets:
        it = tqdm(targets, unit="face", desc="labels import")
    for p in it:
        set_meta_key(p, seg_ie_polys=to_dfl(labels[p.name]))
    return {"folder": str(folder), "format": fmt, "faces": len(targets), "backup": backup,
            "polygons": sum(len(v) for v in labels.values())}
