"""XSeg labels (engine.xseg.polys, engine.xseg.faces): DFL's seg_ie_polys forms, its include/exclude
rasterisation, and the named errors for malformed polygons and files that are not DFLJPGs."""

from __future__ import annotations

import numpy as np
import pytest

from engine.faces import dfljpg
from engine.errors import DataError
from engine.xseg.faces import labelled_faces, scan
from engine.xseg.polys import EXCLUDE, INCLUDE, Poly, parse_polys, point_count, rasterize, sort_polys, to_dfl

SQUARE = np.float32([[2, 2], [8, 2], [8, 8], [2, 8]])
INNER = np.float32([[4, 4], [6, 4], [6, 6], [4, 6]])


def test_dfl_dict_and_legacy_list_forms():
    d = {"polys": [{"type": 1, "pts": SQUARE}, {"type": 0, "pts": INNER}]}
    a = parse_polys(d, "f.jpg")
    b = parse_polys([(1, SQUARE.tolist()), (0, INNER)], "f.jpg")
    assert a == b == [Poly(INCLUDE, SQUARE), Poly(EXCLUDE, INNER)]
    assert parse_polys(None, "f.jpg") == [] and to_dfl([]) is None
    out = to_dfl(a)
    assert out["polys"][0]["type"] == 1 and out["polys"][0]["pts"].dtype == np.float32
    assert parse_polys(out, "x") == a


def test_rasterize_is_dfl_overlay_mask_includes_then_excludes():
    # stored exclude first: DFL sorts includes first, so the hole survives
    polys = [Poly(EXCLUDE, INNER), Poly(INCLUDE, SQUARE)]
    m = rasterize(polys, (12, 12))
    want = np.zeros((12, 12), np.float32)
    want[2:9, 2:9] = 1  # cv2.fillPoly covers the boundary pixels
    want[4:7, 4:7] = 0
    np.testing.assert_array_equal(m[..., 0], want)
    assert sort_polys(polys)[0].type == INCLUDE
    # points are truncated to int32 before drawing (DFL astype(np.int32))
    np.testing.assert_array_equal(rasterize([Poly(1, SQUARE + 0.9)], (12, 12)), rasterize([Poly(1, SQUARE)], (12, 12)))


@pytest.mark.parametrize("value, match", [
    ({"polys": [{"type": 2, "pts": SQUARE}]}, r"polygon 0: type 2 is not valid"),
    ({"polys": [{"type": 1, "pts": [[1, 2, 3]]}]}, r"polygon 0: points must be a list of \[x, y\] pairs"),
    ({"polys": [{"type": 1, "pts": [[1, np.nan], [2, 2], [3, 1]]}]}, "NaN or infinity"),
    ({"polys": ["oops"]}, r"polygon 0 must be a dict"),
    ({"polygons": []}, "no 'polys' list"),
    ("text", "must be a dict or a list"),
])
def test_malformed_polygons_name_the_file_and_polygon(value, match):
    with pytest.raises(DataError, match=match) as ei:
        parse_polys(value, "faces/00001_0.jpg")
    assert "faces/00001_0.jpg" in str(ei.value)


def test_scan_counts_labelled_and_falls_back_to_masks(xseg_faces):
    faces = scan(xseg_faces)
    assert len(faces) == 6 and all(f.labelled for f in faces)
    dfljpg.update_meta(faces[0].sample.path, seg_ie_polys={"polys": [{"type": 1, "pts": np.zeros((0, 2), np.float32)}]})
    dfljpg.update_meta(faces[1].sample.path, seg_ie_polys=None)
    train, skipped, source = labelled_faces(scan(xseg_faces))
    assert (len(train), skipped, source) == (4, 2, "polygons")  # an empty polygon is not a label (DFL pts count)
    for f in scan(xseg_faces):
        dfljpg.update_meta(f.sample.path, seg_ie_polys=None)
    with pytest.raises(DataError, match="none of the 6 faces has XSeg polygons or an xseg_mask"):
        labelled_faces(scan(xseg_faces), where=str(xseg_faces))
    dfljpg.update_meta(faces[2].sample.path, xseg_mask=np.ones((256, 256), np.float32))
    train, skipped, source = labelled_faces(scan(xseg_faces))
    assert (len(train), skipped, source) == (1, 5, "xseg_mask")


def test_non_dfljpg_and_malformed_labels_in_a_faceset_are_named(xseg_faces):
    (xseg_faces / "zz_plain.jpg").write_bytes(dfljpg.encode_jpeg(np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(DataError, match=r"zz_plain.jpg: not a DFLJPG \(a JPEG without DFL metadata\)"):
        scan(xseg_faces)
    (xseg_faces / "zz_plain.jpg").unlink()
    (xseg_faces / "zz_broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="zz_broken.jpg: not a DFLJPG"):
        scan(xseg_faces)
    (xseg_faces / "zz_broken.jpg").unlink()
    bad = sorted(xseg_faces.glob("*.jpg"))[3]
    dfljpg.update_meta(bad, seg_ie_polys={"polys": [{"type": 7, "pts": SQUARE}]})
    with pytest.raises(DataError, match=rf"{bad.name}: seg_ie_polys polygon 0: type 7 is not valid"):
        scan(xseg_faces)


def test_point_count():
    assert point_count([Poly(1, SQUARE), Poly(0, np.zeros((0, 2)))]) == 4
