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


# ---------------------------------------------------------------------------------------------------------
# faces that would train silently wrong (issue #13.11)


def _face(folder: Path, name: str, size: int, landmarks_scale: float = 1.0, seed: int = 0) -> Path:
    from synthetic_faces import synthetic_face

    img, lm = synthetic_face(np.random.default_rng(seed), size, "wf", 10.0)
    path = folder / name
    dfljpg.write(path, img, {"face_type": "wf", "landmarks": lm * landmarks_scale})
    return path


def test_landmarks_outside_the_image_are_skipped_with_the_file_named(tmp_path, caplog):
    d = tmp_path / "faces"
    d.mkdir()
    _face(d, "good.jpg", 256)
    _face(d, "big_landmarks.jpg", 256, landmarks_scale=2.0)  # 512-px landmarks in a 256-px face
    _face(d, "absurd.jpg", 256, landmarks_scale=1e6)
    with caplog.at_level("WARNING", logger="torchsae.data"):
        got = scan_faceset(d)
    assert [s.name for s in got] == ["good.jpg"]
    assert "skipped 2 of 3 files" in caplog.text
    assert "big_landmarks.jpg: landmarks lie outside the 256x256 image" in caplog.text
    assert "absurd.jpg: landmarks lie outside" in caplog.text


def test_real_face_landmarks_pass(tmp_path):
    """Every golden DFL face (full face, whole face at yaw 20) keeps its landmarks check."""
    for f in FILES:
        shutil.copy(GOLDEN / f, tmp_path / f)
    assert len(scan_faceset(tmp_path)) == len(FILES)


def test_jpeg_cut_mid_scan_is_skipped_at_scan_or_at_decode(tmp_path, caplog):
    from engine.faces.faceset import Faceset

    d = tmp_path / "faces"
    d.mkdir()
    for i in range(3):
        _face(d, f"{i}.jpg", 128, seed=i)
    data = (d / "1.jpg").read_bytes()
    (d / "1.jpg").write_bytes(data[: len(data) * 2 // 3])  # cut: no end marker -> skipped at scan
    data = (d / "2.jpg").read_bytes()
    (d / "2.jpg").write_bytes(data[: len(data) * 2 // 3] + b"\xff\xd9")  # cut and closed: decodes grey
    with caplog.at_level("WARNING", logger="torchsae.data"):
        fs = Faceset(d)
    assert [s.name for s in fs.samples] == ["0.jpg", "2.jpg"] and "1.jpg: truncated JPEG" in caplog.text
    fs.face(0)
    with pytest.raises(DataError, match=r"2\.jpg .*truncated JPEG: its last rows are one flat grey fill"):
        fs.face(1)


def test_faces_smaller_than_the_model_are_kept_and_counted(tmp_path, caplog):
    from engine.faces.faceset import warn_small_faces

    d = tmp_path / "faces"
    d.mkdir()
    for i in range(3):
        _face(d, f"s{i}.jpg", 32, seed=i)
    _face(d, "big.jpg", 128)
    samples = scan_faceset(d)
    with caplog.at_level("WARNING", logger="torchsae.data"):
        assert warn_small_faces(samples, 64, str(d)) == 3
    assert "3 face(s) are smaller than the model resolution 64" in caplog.text and "s0.jpg (32x32)" in caplog.text
    assert len(samples) == 4  # kept: DFL upsamples them
