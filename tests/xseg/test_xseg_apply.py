"""XSeg's faceset verbs (engine.xseg.apply): apply writes DFL's masks and they reach SAEHD's training samples
and the merger; nothing is lost when apply is interrupted; remove / remove-labels / fetch / restore; named
errors before any write."""

from __future__ import annotations

import hashlib
import json
import os

import cv2
import numpy as np
import pytest

from engine import recipe
from engine.data.sample import full_face_mask
from engine.errors import DataError
from engine.faces import dfljpg
from engine.faces.faceset import Faceset
from engine.faces.facetypes import FaceType
from engine.xseg import apply as ap
from engine.xseg.model import open_masker
from engine.xseg.train import train_xseg
from xseg_helpers import xseg_recipe_text


@pytest.fixture(scope="module")
def xseg_run(xseg_faces_master, tmp_path_factory):
    """A 3-step XSeg run (64 px, base width 4) on the labelled master faces."""
    run = tmp_path_factory.mktemp("xseg_run") / "run"
    r = recipe.loads(xseg_recipe_text([xseg_faces_master], run, extra_xseg="augment = false"), source="t.toml")
    train_xseg(r, max_steps=3, progress=False)
    return run


def _pixels(path) -> bytes:
    """Every JPEG segment except the APP15 metadata: what apply must never change."""
    segs = dfljpg.parse_segments(open(path, "rb").read(), str(path))
    return b"".join(s.to_bytes() for s in segs if s.marker != 0xEF)


def _snapshot(folder):
    return {p.name: (hashlib.sha256(_pixels(p)).hexdigest(), dfljpg.read(p)) for p in sorted(folder.glob("*.jpg"))}


def test_apply_writes_dfl_masks_backup_first_and_restore_undoes(xseg_run, xseg_faces):
    before = _snapshot(xseg_faces)
    res = ap.apply_xseg(xseg_run, xseg_faces, progress=False)
    assert res["written"] == 6 and res["resolution"] == 64 and res["face_type"] == "whole_face"
    masker = open_masker(xseg_run)
    for p in sorted(xseg_faces.glob("*.jpg")):
        meta = dfljpg.read(p)
        assert hashlib.sha256(_pixels(p)).hexdigest() == before[p.name][0]  # pixels byte for byte
        img = cv2.resize(dfljpg.read_image(p).astype(np.float32) / 255, (64, 64), interpolation=cv2.INTER_LANCZOS4)
        want = (masker(img) >= 0.5).astype(np.float32)
        # DFL: extract, binarise at 0.5, store at the network resolution (batched vs single calls may flip a
        # pixel that sits at 0.5 within float rounding)
        assert meta["xseg_mask"].shape == want.shape and (meta["xseg_mask"] != want).mean() < 2e-3
        assert dfljpg.load(p).xseg_mask_bytes[:4] == b"\x89PNG"
        np.testing.assert_array_equal(meta["landmarks"], before[p.name][1]["landmarks"])
    assert not (xseg_faces / ap.JOURNAL).exists()
    backups = list((xseg_faces / ap.BACKUP_DIR).glob("*-apply.zip"))
    assert len(backups) == 1
    out = ap.restore_backup(xseg_faces)
    assert out["restored"] == 6
    for p in sorted(xseg_faces.glob("*.jpg")):
        assert "xseg_mask" not in dfljpg.load(p).meta
        assert hashlib.sha256(_pixels(p)).hexdigest() == before[p.name][0]


class _Crash(Exception):
    pass


def test_interrupted_apply_loses_nothing_and_resumes(xseg_run, xseg_faces, monkeypatch):
    before = _snapshot(xseg_faces)

    def crash_after(n):
        if n == 3:
            raise _Crash("power cut after 3 faces")

    with pytest.raises(_Crash):
        ap.apply_xseg(xseg_run, xseg_faces, batch_size=2, progress=False, _after_write=crash_after)
    journal = json.loads((xseg_faces / ap.JOURNAL).read_text())
    assert len(journal["done"]) == 3  # the journal follows every face

    # a crash inside the write itself: the temp file is written, the rename never happens
    real_replace = os.replace
    calls = {"n": 0}

    def dying_replace(src, dst):
        if str(dst).endswith(".jpg"):
            calls["n"] += 1
            if calls["n"] == 2:
                raise _Crash("killed between temp file and rename")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(_Crash):
        ap.apply_xseg(xseg_run, xseg_faces, batch_size=2, progress=False)
    monkeypatch.setattr(os, "replace", real_replace)

    # every face is a complete DFLJPG with its original pixels and labels; some already have a mask
    masked = 0
    for name, (pix, meta) in before.items():
        p = xseg_faces / name
        now = dfljpg.read(p)
        assert hashlib.sha256(_pixels(p)).hexdigest() == pix
        np.testing.assert_array_equal(now["landmarks"], meta["landmarks"])
        np.testing.assert_array_equal(now["seg_ie_polys"]["polys"][0]["pts"], meta["seg_ie_polys"]["polys"][0]["pts"])
        masked += "xseg_mask" in now
    assert masked == 4
    assert len(list((xseg_faces / ap.BACKUP_DIR).glob("*.zip"))) == 1  # the resumed run reused the first backup

    # a process killed outright (no exception handler ran) leaves write_atomic's temp file beside the face
    stale = xseg_faces / f".{sorted(before)[4]}.4242-4242.partial"
    stale.write_bytes(b"half a jpeg")
    res = ap.apply_xseg(xseg_run, xseg_faces, batch_size=2, progress=False)
    assert res["resumed_done"] == 4 and res["written"] == 2
    assert all("xseg_mask" in dfljpg.load(p).meta for p in xseg_faces.glob("*.jpg"))
    assert not list(xseg_faces.glob(".*.partial")) and not (xseg_faces / ap.JOURNAL).exists()
    ap.restore_backup(xseg_faces)
    for name, (pix, meta) in before.items():
        assert "xseg_mask" not in dfljpg.load(xseg_faces / name).meta


def test_applied_mask_reaches_the_saehd_training_sample_and_the_merge(xseg_run, xseg_faces):
    ap.apply_xseg(xseg_run, xseg_faces, progress=False)
    fs = Faceset(xseg_faces)
    face = fs.face(0)
    stored = dfljpg.read(sorted(xseg_faces.glob("*.jpg"))[0])["xseg_mask"]
    full = full_face_mask(face)  # SAEHD's FULL_FACE target mask (docs/dfl.md §7.3): the applied mask, not the hull
    want = np.clip(cv2.resize(stored, (128, 128), interpolation=cv2.INTER_CUBIC), 0, 1)[..., None]
    np.testing.assert_allclose(full, want, atol=1e-6)

    # merge: XSeg-dst runs the XSeg model on the dst crop (DFL's merger does not read xseg_mask)
    from engine.merge.face import predict_faces, xseg_dst_input
    from engine.recipe.specs import MergeSpec

    class _Model:
        resolution = 64

        def predict(self, x):
            n = x.shape[0]
            return x, np.ones((n, 64, 64, 1), np.float32), np.ones((n, 64, 64, 1), np.float32)

    masker = open_masker(xseg_run)
    frame = dfljpg.read_image(sorted(xseg_faces.glob("*.jpg"))[0])
    lm = face.landmarks
    (pred, _), = predict_faces(frame.astype(np.float32) / 255, [lm], MergeSpec(mask_mode="XSeg-dst"), FaceType.WHOLE_FACE,
                               64, _Model().predict, masker)
    want = masker(xseg_dst_input(frame.astype(np.float32) / 255, lm, FaceType.WHOLE_FACE))
    np.testing.assert_allclose(pred.xseg_dst, want, atol=1e-6)
    assert pred.xseg_dst.shape == (256, 256, 1)  # the 64-px model answers at the merger's 256 crop


def test_recrop_to_another_face_type_needs_frame_landmarks(xseg_run, xseg_faces):
    res = ap.apply_xseg(xseg_run, xseg_faces, face_type="f", progress=False)
    assert res["face_type"] == "full_face" and res["written"] == 6
    p = sorted(xseg_faces.glob("*.jpg"))[0]
    dfljpg.update_meta(p, source_landmarks=None)
    with pytest.raises(DataError, match="needs the frame landmarks"):
        ap.apply_xseg(xseg_run, xseg_faces, face_type="head", progress=False)


def test_remove_remove_labels_fetch(xseg_run, xseg_faces, tmp_path):
    ap.apply_xseg(xseg_run, xseg_faces, progress=False)
    files = sorted(xseg_faces.glob("*.jpg"))
    dfljpg.update_meta(files[1], seg_ie_polys=None)
    out = ap.fetch_labelled(xseg_faces, tmp_path / "fetched")
    assert out["copied"] == 5 and sorted(p.name for p in (tmp_path / "fetched").glob("*.jpg")) == \
        [p.name for p in files if p != files[1]]
    assert (tmp_path / "fetched" / files[0].name).read_bytes() == files[0].read_bytes()
    assert ap.remove_masks(xseg_faces, progress=False)["changed"] == 6
    assert not any("xseg_mask" in dfljpg.load(p).meta for p in files)
    assert ap.remove_labels(xseg_faces, progress=False)["changed"] == 5
    assert not any("seg_ie_polys" in dfljpg.load(p).meta for p in files)
    moved = ap.fetch_labelled(tmp_path / "fetched", tmp_path / "moved", move=True)
    assert moved["copied"] == 5 and not list((tmp_path / "fetched").glob("*.jpg"))
    ap.restore_backup(xseg_faces)  # the newest backup: before remove-labels
    assert sum("seg_ie_polys" in dfljpg.load(p).meta for p in files) == 5


def test_non_dfljpg_stops_every_verb_before_any_write(xseg_run, xseg_faces):
    (xseg_faces / "zz.jpg").write_bytes(dfljpg.encode_jpeg(np.zeros((16, 16, 3), np.uint8)))
    before = {p.name: p.read_bytes() for p in xseg_faces.glob("*.jpg")}
    for fn in (lambda: ap.apply_xseg(xseg_run, xseg_faces, progress=False),
               lambda: ap.remove_labels(xseg_faces, progress=False), lambda: ap.fetch_labelled(xseg_faces)):
        with pytest.raises(DataError, match=r"zz.jpg: not a DFLJPG"):
            fn()
    assert {p.name: p.read_bytes() for p in xseg_faces.glob("*.jpg")} == before
    assert not (xseg_faces / ap.BACKUP_DIR).exists()


def test_cli_apply_remove(xseg_run, xseg_faces, capsys):
    from engine.__main__ import main

    assert main(["xseg", "apply", str(xseg_run), str(xseg_faces), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 6
    assert main(["xseg", "remove", str(xseg_faces), "--no-progress"]) == 0
    assert main(["xseg", "apply", str(xseg_run), str(xseg_faces / "nope")]) == 2
    assert "faceset folder not found" in capsys.readouterr().err
