"""Faceset scanning (DFL aligned folders and plain images + landmarks), bad-file handling, CLI."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.__main__ import main
from engine.faces import dfljpg
from engine.faces.faceset import scan_faceset
from engine.errors import DataError, UnsafeFileError

GOLDEN = Path(__file__).parent.parent / "golden" / "dfljpg"
FILES = ["face_full_frontal.jpg", "face_full_no_mask.jpg", "face_wf_yaw20.jpg"]


def _with_raw_meta(src: Path, dst: Path, payload: bytes) -> None:
    segs = [s for s in dfljpg.parse_segments(src.read_bytes()) if s.name != "APP15"]
    segs.insert(2, dfljpg.Segment(0xEF, payload))
    dst.write_bytes(dfljpg.join_segments(segs))


@pytest.fixture
def mixed(tmp_path):
    """3 DFL faces, 1 plain PNG with landmarks, and 6 bad files."""
    d = tmp_path / "faces"
    d.mkdir()
    for f in FILES:
        shutil.copy(GOLDEN / f, d / f)
    lm = dfljpg.read(GOLDEN / FILES[0])["landmarks"]
    img = dfljpg.read_image(GOLDEN / FILES[0])
    cv2.imwrite(str(d / "plain.png"), img)
    np.save(d / "plain_landmarks.npy", lm.astype(np.float32))
    cv2.imwrite(str(d / "nolm.jpg"), img)  # JPEG without DFL data and without landmarks
    (d / "trunc.jpg").write_bytes((GOLDEN / FILES[0]).read_bytes()[:7000])
    cv2.imwrite(str(d / "badlm.png"), img)
    np.save(d / "badlm_landmarks.npy", np.zeros((5, 2)))
    payload = dfljpg._dumps({"face_type": "weird_face", "landmarks": lm.tolist()})
    _with_raw_meta(GOLDEN / FILES[0], d / "weird.jpg", payload)
    (d / "notes.txt").write_text("ignored: not an image")
    (d / "empty.png").write_bytes(b"")
    (d / "zero.jpg").write_bytes(b"")
    return d


def test_scan_mixed_folder_one_summary_warning(mixed, caplog):
    with caplog.at_level("WARNING", logger="torchsae.data"):
        samples = scan_faceset(mixed)
    assert [s.name for s in samples] == ["face_full_frontal.jpg", "face_full_no_mask.jpg", "face_wf_yaw20.jpg", "plain.png"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    w = warnings[0]
    assert "skipped 6 of 10 files" in w and str(mixed) in w
    for bad in ("badlm.png", "empty.png", "nolm.jpg", "trunc.jpg"):
        assert bad in w
    assert "and 1 more" in w  # only the first few names are listed
    plain = samples[3]
    assert plain.face_type == "whole_face" and plain.encoding == "png" and plain.shape == (256, 256, 3)
    np.testing.assert_allclose(plain.landmarks, dfljpg.read(GOLDEN / FILES[0])["landmarks"], atol=1e-4)
    np.testing.assert_array_equal(plain.load_image(), dfljpg.read_image(GOLDEN / FILES[0]))
    full = samples[0]
    assert full.face_type == "full_face" and full.has_xseg_mask and full.get_xseg_mask().shape == (256, 256, 1)
    assert samples[1].xseg_mask is None and samples[2].face_type == "whole_face"


def test_plain_face_type_argument(mixed):
    samples = scan_faceset(mixed, face_type="f")
    assert samples[3].face_type == "full_face"  # plain image takes the argument
    assert samples[2].face_type == "whole_face"  # DFL files keep their own
    with pytest.raises(DataError, match="unknown face type 'wholeface'"):
        scan_faceset(mixed, face_type="wholeface")


def test_unknown_face_type_is_reported(mixed, caplog):
    with caplog.at_level("WARNING", logger="torchsae.data"):
        scan_faceset(mixed)
    (msg,) = [r.getMessage() for r in caplog.records]
    assert "weird.jpg: face_type: unknown face type 'weird_face'" in msg
    assert "zero.jpg" not in msg  # the 6th bad file is only counted


def test_nothing_usable_names_the_folder(tmp_path):
    d = tmp_path / "junk"
    d.mkdir()
    with pytest.raises(DataError, match=r"junk: no usable aligned faces \(no \.jpg/\.png files\)"):
        scan_faceset(d)
    (d / "a.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(DataError, match=r"junk: no usable aligned faces \(1 image files, none usable\)"):
        scan_faceset(d)
    with pytest.raises(DataError, match="missing: faceset folder does not exist"):
        scan_faceset(tmp_path / "missing")


def test_malicious_metadata_stops_the_scan(mixed, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    _with_raw_meta(GOLDEN / FILES[0], mixed / "zz_evil.jpg", pickle.dumps({"landmarks": Evil()}, 4))
    with pytest.raises(UnsafeFileError, match="zz_evil.jpg"):
        scan_faceset(mixed)
    assert not marker.exists()


def test_pose_of_sample_uses_width():
    s = scan_faceset(GOLDEN)[2]
    from engine.faces.landmarks import estimate_pitch_yaw_roll

    assert s.pitch_yaw_roll() == estimate_pitch_yaw_roll(s.landmarks, size=256)


def test_cli_info_and_pack(mixed, capsys):
    assert main(["faceset", "info", str(mixed), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 4
    assert info["face_types"] == {"full_face": 2, "whole_face": 2}
    assert info["resolutions"] == {"256x256": 4}
    assert info["xseg_masks"] == 2
    assert set(info["pose_deg"]) == {"pitch", "yaw", "roll"}
    assert main(["faceset", "pack", str(mixed)]) == 0
    out = capsys.readouterr().out
    assert "packed 4 faces" in out and (mixed / "faceset.tspak").is_file()
    other = mixed.parent / "cache.tspak"
    assert main(["faceset", "pack", str(mixed), "--out", str(other), "--decoded"]) == 0
    capsys.readouterr()
    assert main(["faceset", "info", str(other)]) == 0
    text = capsys.readouterr().out
    assert "4 faces" in text and "full_face 2, whole_face 2" in text
    assert main(["faceset", "info", str(mixed.parent / "nope")]) == 2
    assert "faceset not found" in capsys.readouterr().err
