"""Media reading: DFL frame names, natural order, both video readers, errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from engine.errors import DataError
from engine.extract import media
from engine.extract.media import open_media, read_image, video_frame_stem


def _write_video(path, n=7, size=(64, 48)):
    """MJPG .avi whose frame i is uniformly grey 20·i + 10 (MJPG keeps flat frames exact)."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    assert w.isOpened()
    for i in range(n):
        w.write(np.full((size[1], size[0], 3), 20 * i + 10, np.uint8))
    w.release()


def test_video_frame_stem_is_dfl_5_digit_1_based():
    assert video_frame_stem(0) == "00001"
    assert video_frame_stem(41) == "00042"
    assert video_frame_stem(123455) == "123456"


@pytest.mark.parametrize("reader", ["cv2", "ffmpeg"])
def test_video_frames_in_order_with_skips(tmp_path, reader):
    p = tmp_path / "v.avi"
    _write_video(p)
    src = open_media(p, reader)
    assert src.kind == "video" and src.reader == reader and src.count == 7
    frames = list(src.frames())
    assert [f.stem for f in frames] == [f"{i:05d}" for i in range(1, 8)]
    # the writer's codec is lossy: OpenCV 4 and 5 round the flat colours a level apart
    assert np.allclose([f.image.mean() for f in frames], [20 * i + 10 for i in range(7)], atol=1.5)
    assert frames[0].image.shape == (48, 64, 3) and frames[0].image.dtype == np.uint8
    # skipped frames are not yielded, and the kept ones keep their true index and pixels
    kept = list(src.frames(lambda i, stem: i % 3 == 0))
    assert [(f.index, f.stem) for f in kept] == [(0, "00001"), (3, "00004"), (6, "00007")]
    assert np.allclose([f.image.mean() for f in kept], [10, 70, 130], atol=1.5)


def test_auto_falls_back_to_ffmpeg_when_opencv_cannot_open(tmp_path, monkeypatch):
    p = tmp_path / "v.avi"
    _write_video(p, n=3)

    class Closed:
        def __init__(self, *a):
            pass

        def isOpened(self):
            return False

        def grab(self):
            return False

        def get(self, *_a):
            return 0

        def release(self):
            pass

    monkeypatch.setattr(media.cv2, "VideoCapture", Closed)
    src = open_media(p)
    assert src.reader == "ffmpeg" and src.count == 3
    assert np.allclose([f.image.mean() for f in src.frames()], [10, 30, 50], atol=1.5)
    with pytest.raises(DataError, match="OpenCV cannot decode"):
        open_media(p, "cv2")


def test_image_folder_natural_order_and_stems(tmp_path):
    for name, v in [("img10.png", 3), ("img2.jpg", 2), ("img1.png", 1), ("notes.txt", 0)]:
        if name.endswith(".txt"):
            (tmp_path / name).write_text("x")
        else:
            cv2.imwrite(str(tmp_path / name), np.full((8, 8, 3), v * 40, np.uint8))
    src = open_media(tmp_path)
    assert src.kind == "images" and src.count == 3
    frames = list(src.frames())
    assert [f.stem for f in frames] == ["img1", "img2", "img10"]
    assert np.allclose([f.image.mean() for f in frames], [40, 80, 120], atol=1.5)


def test_image_folder_duplicate_stem_is_an_error(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 4, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="share the stem 'a'"):
        open_media(tmp_path)


def test_bad_inputs_name_the_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_media(tmp_path / "missing.mp4")
    (tmp_path / "x.docx").write_text("x")
    with pytest.raises(DataError, match=r"unsupported input type '\.docx'"):
        open_media(tmp_path / "x.docx")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no images"):
        open_media(empty)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: not a decodable image"):
        read_image(tmp_path / "broken.png")
    with pytest.raises(DataError, match="reader 'vlc'"):
        open_media(tmp_path, "vlc")


def test_read_image_converts_grey_alpha_and_16_bit(tmp_path):
    cv2.imwrite(str(tmp_path / "g.png"), np.full((4, 5), 77, np.uint8))
    cv2.imwrite(str(tmp_path / "a.png"), np.dstack([np.full((4, 5, 3), 9, np.uint8), np.zeros((4, 5), np.uint8)]))
    cv2.imwrite(str(tmp_path / "w.png"), np.full((4, 5, 3), 257 * 200, np.uint16))
    for name, v in [("g.png", 77), ("a.png", 9), ("w.png", 200)]:
        img = read_image(tmp_path / name)
        assert img.shape == (4, 5, 3) and img.dtype == np.uint8
        assert np.all(img == v), name
