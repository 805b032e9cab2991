"""Sort / clean: each method on synthetic facesets with a known answer, drop + undo, CLI; identity
grouping also on real faces of the two demo people."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from engine.faces import dfljpg
from engine.errors import DataError
from engine.extract import sort as S

from extract_helpers import mean_face_landmarks

SIZE = 256


def _write_face(path, image, lm):
    dfljpg.write(path, image, {"face_type": "whole_face", "landmarks": lm}, quality=95)


def _texture(seed, size=SIZE):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (size // 4, size // 4, 3), dtype=np.uint8)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_NEAREST)


@pytest.fixture
def blur_set(tmp_path):
    """Five faces of one texture blurred with sigma 0..4, under names in a scrambled order."""
    d = tmp_path / "aligned"
    d.mkdir()
    lm = mean_face_landmarks(SIZE)
    base = _texture(0)
    names = {0: "c.jpg", 1: "e.jpg", 2: "a.jpg", 3: "d.jpg", 4: "b.jpg"}  # sigma -> name
    for sigma, name in names.items():
        img = base if sigma == 0 else cv2.GaussianBlur(base, (0, 0), sigma)
        _write_face(d / name, img, lm)
    return d, names


def test_sharpness_is_laplacian_variance_inside_hull_only():
    from engine.faces.masks import get_image_hull_mask

    lm = mean_face_landmarks(SIZE)
    img = _texture(1)
    mask = get_image_hull_mask(img.shape, lm)[..., 0] > 0
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float64)
    expected = cv2.Laplacian(grey, cv2.CV_64F, ksize=1)[mask].var()  # ksize=1: [[0,1,0],[1,-4,1],[0,1,0]]
    assert S.sharpness(img, lm) == pytest.approx(expected, rel=1e-12)
    # background outside the hull (by more than the kernel's 1 px reach) does not count
    far = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) == 0
    other = img.copy()
    other[far] = 0
    assert S.sharpness(other, lm) == pytest.approx(expected, rel=1e-12)
    flat = np.full_like(img, 128)
    assert S.sharpness(flat, lm) == 0.0


def test_blur_order_drop_and_undo(blur_set):
    d, names = blur_set
    res = S.sort_faceset(d, "blur")
    assert res.order == [names[s] for s in range(5)]  # sharpest (sigma 0) first
    assert res.worst == [names[s] for s in range(4, -1, -1)]
    assert all(res.scores[res.order[i]] > res.scores[res.order[i + 1]] for i in range(4))
    on_disk = json.loads((d / "sort_blur.json").read_text())
    assert on_disk["order"] == res.order and on_disk["by"] == "blur"
    assert sorted(p.name for p in d.glob("*.jpg")) == sorted(names.values())  # nothing moved yet

    moved = S.drop_worst(d, res, percent=40)  # floor(5 * 0.4) = 2 blurriest
    assert moved == [names[4], names[3]]
    assert sorted(p.name for p in (d / "_dropped").glob("*.jpg")) == sorted(moved)
    assert sorted(p.name for p in d.glob("*.jpg")) == sorted(names[s] for s in range(3))
    log = json.loads((d / "_dropped" / "drop_log.json").read_text())
    assert [m["file"] for m in log["moves"]] == moved and "blur" in log["moves"][0]["reason"]
    # a fresh sort ignores _dropped/
    assert len(S.sort_faceset(d, "blur").order) == 3

    restored = S.undo_drops(d)
    assert sorted(restored) == sorted(moved)
    assert sorted(p.name for p in d.glob("*.jpg")) == sorted(names.values())
    assert not (d / "_dropped").exists()
    with pytest.raises(DataError, match="nothing to undo"):
        S.undo_drops(d)


def test_undo_refuses_to_overwrite(blur_set):
    d, names = blur_set
    res = S.sort_faceset(d, "blur")
    S.drop_worst(d, res, percent=20)
    dropped = names[4]
    shutil.copy(d / "_dropped" / dropped, d / dropped)  # someone put a copy back by hand
    with pytest.raises(DataError, match=f"{dropped}: exists in the faceset and in _dropped"):
        S.undo_drops(d)
    assert (d / "_dropped" / dropped).is_file() and (d / "_dropped" / "drop_log.json").is_file()


def test_drop_arguments(blur_set):
    d, _names = blur_set
    res = S.sort_faceset(d, "blur")
    for bad in (0, 100, None, -5):
        with pytest.raises(DataError, match="0 < PCT < 100"):
            S.drop_worst(d, res, percent=bad)
    with pytest.raises(DataError, match="--drop-others needs --by face"):
        S.drop_worst(d, res, others=True)
    with pytest.raises(DataError, match="'blurr' is not known — did you mean 'blur'"):
        S.sort_faceset(d, "blurr")


def test_yaw_order(tmp_path):
    d = tmp_path / "aligned"
    d.mkdir()
    yaws = {"p.jpg": -30, "q.jpg": 15, "r.jpg": 0, "s.jpg": 30, "t.jpg": -15}
    img = _texture(2)
    for name, y in yaws.items():
        _write_face(d / name, img, mean_face_landmarks(SIZE, yaw_deg=y))
    res = S.sort_faceset(d, "yaw")
    est = np.array([res.scores[n] for n in yaws])
    true = np.radians(list(yaws.values()))
    # estimated yaw is monotone in the true yaw (one sign convention or the other) and close in size
    sign = np.sign(np.corrcoef(est, true)[0, 1])
    np.testing.assert_allclose(sign * est, true, atol=np.radians(5))
    by_true = [n for n, _ in sorted(yaws.items(), key=lambda kv: sign * kv[1])]
    assert res.order == by_true
    assert set(res.worst[:2]) == {"p.jpg", "s.jpg"} and res.worst[-1] == "r.jpg"


def test_bhattacharyya_matches_opencv():
    rng = np.random.default_rng(3)
    imgs = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(3)] + [np.full((32, 32, 3), 7, np.uint8)]
    hists = np.stack([S.channel_histograms(i) for i in imgs])
    d = S.bhattacharyya_matrix(hists)
    for a in range(4):
        for b in range(4):
            exp = sum(
                cv2.compareHist(
                    cv2.calcHist([imgs[a]], [c], None, [256], [0, 256]), cv2.calcHist([imgs[b]], [c], None, [256], [0, 256]), cv2.HISTCMP_BHATTACHARYYA
                )
                for c in range(3)
            )
            assert d[a, b] == pytest.approx(exp, abs=1e-6)
    assert np.allclose(np.diag(d), 0, atol=1e-6)


def test_hist_chain_groups_similar_colours(tmp_path):
    d = tmp_path / "aligned"
    d.mkdir()
    rng = np.random.default_rng(4)
    lm = mean_face_landmarks(SIZE)

    def tinted(bgr, spread=20):
        img = np.clip(rng.normal(bgr, spread, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
        return img

    # interleaved names so a name order would alternate groups
    spec = {"a1.jpg": (40, 40, 200), "a2.jpg": (200, 40, 40), "a3.jpg": (45, 40, 195), "a4.jpg": (195, 45, 40), "a5.jpg": (40, 45, 205), "a6.jpg": (60, 200, 60)}
    for name, bgr in spec.items():
        _write_face(d / name, tinted(bgr), lm)
    res = S.sort_faceset(d, "hist")
    red = {"a1.jpg", "a3.jpg", "a5.jpg"}
    blue = {"a2.jpg", "a4.jpg"}
    assert res.order[0] == "a1.jpg" and set(res.order[:3]) == red
    # after the reds, the chain never goes back: the blue pair is contiguous
    pos = {n: i for i, n in enumerate(res.order)}
    assert abs(pos["a2.jpg"] - pos["a4.jpg"]) == 1 and min(pos[n] for n in blue) >= 3
    assert res.worst[0] == "a6.jpg"  # the lone green face is the most dissimilar


def test_cluster_identities_synthetic():
    rng = np.random.default_rng(5)
    a = rng.normal(0, 1, 128)
    b = a + rng.normal(0, 1, 128) * (2.0 / np.sqrt(128))  # ~2 apart from a
    desc = np.stack([a + rng.normal(0, 0.01, 128) for _ in range(5)] + [b + rng.normal(0, 0.01, 128) for _ in range(3)])
    order = [5, 0, 6, 1, 2, 7, 3, 4]  # mix them
    labels, dist = S.cluster_identities(desc[order], threshold=0.6)
    assert labels.tolist() == [1, 0, 1, 0, 0, 1, 0, 0]  # the 5 a's are the target (0)
    assert dist[labels == 0].max() < 0.2 and dist[labels == 1].min() > 1.5
    # A face 0.5 from the target's centroid but, on average, > 0.6 from its members (members spread
    # ~0.4 around a, pairwise ~0.57): average linkage alone leaves it out, the centroid rule keeps it.
    members = np.stack([a + rng.normal(0, 0.4 / np.sqrt(128), 128) for _ in range(12)])
    u = rng.normal(0, 1, 128)
    u /= np.linalg.norm(u)
    face = members.mean(0) + 0.5 * u
    assert np.linalg.norm(members - face, axis=1).mean() > 0.6
    x = np.vstack([members, face, desc[5:]])
    from scipy.cluster.hierarchy import fcluster, linkage

    raw = fcluster(linkage(x, method="average"), t=0.6, criterion="distance")
    assert raw[12] != raw[0]
    labels, dist = S.cluster_identities(x, threshold=0.6)
    assert labels.tolist() == [0] * 13 + [1] * 3
    assert dist[12] < 0.6


@pytest.fixture(scope="module")
def two_people(tmp_path_factory, demo_videos, dlib_backend):
    """4 faces of the src woman + 2 of the dst man in one folder (real extraction, wf 256)."""
    from engine.extract.extractor import extract

    root = tmp_path_factory.mktemp("people")
    mix = root / "mix"
    mix.mkdir()
    for video, step, tag in ((demo_videos[0], 118, "w"), (demo_videos[1], 36, "m")):
        out = root / tag
        extract(video, out, backend=dlib_backend, size=256, step=step, write_frames=False, progress=False)
        for p in sorted(out.glob("*.jpg")):
            shutil.copy(p, mix / f"{tag}{p.name}")
    return mix


def test_face_sort_separates_the_two_demo_people(two_people):
    from engine.__main__ import main

    d = two_people
    names = sorted(p.name for p in d.glob("*.jpg"))
    assert [n[0] for n in names] == ["m", "m", "w", "w", "w", "w"]
    res = S.sort_faceset(d, "face")
    assert {n for n, g in res.groups.items() if g == 0} == {n for n in names if n.startswith("w")}
    assert all(res.groups[n] != 0 for n in names if n.startswith("m"))
    assert all(res.scores[n] > 0.6 for n in names if n.startswith("m"))
    assert [n[0] for n in res.order[:4]] == ["w"] * 4
    # CLI: drop the other person, then undo
    assert main(["sort", str(d), "--by", "face", "--drop-others"]) == 0
    assert sorted(p.name for p in (d / "_dropped").glob("*.jpg")) == [n for n in names if n.startswith("m")]
    assert main(["sort", str(d), "--undo"]) == 0
    assert sorted(p.name for p in d.glob("*.jpg")) == names


def test_sort_cli_errors(tmp_path, capsys):
    from engine.__main__ import main

    assert main(["sort", str(tmp_path)]) == 2
    assert "--by is required" in capsys.readouterr().err
    assert main(["sort", str(tmp_path), "--by", "blur"]) == 2
    assert "no aligned faces" in capsys.readouterr().err
    plain = tmp_path / "plain.jpg"
    cv2.imwrite(str(plain), np.zeros((8, 8, 3), np.uint8))
    assert main(["sort", str(tmp_path), "--by", "yaw"]) == 2
    assert "plain.jpg: not an aligned DFL face" in capsys.readouterr().err
