"""DFL's XSeg training sample (engine.xseg.augment, docs/dfl.md §5.7): the label at the network resolution and
face type, the augmentation's invariants, and the filters' formulas."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from engine.faces.facetypes import FaceType
from engine.faces.landmarks import get_transform_mat, transform_points
from engine.xseg.augment import (augment, image_and_mask, random_circle_faded, random_jpeg, random_resize,
                                 random_rgb_levels)
from engine.xseg.faces import scan
from engine.xseg.polys import Poly, rasterize


def _iou(a, b):
    a, b = a > 0.5, b > 0.5
    return (a & b).sum() / max(1, (a | b).sum())


def test_same_face_type_is_a_lanczos_resize_of_the_rasterised_polygons(xseg_faces):
    f = scan(xseg_faces)[0]
    img, mask = image_and_mask(f.sample, f.polys, 64, FaceType.WHOLE_FACE)
    full = rasterize(f.polys, (128, 128))
    want = cv2.resize(full, (64, 64), interpolation=cv2.INTER_LANCZOS4)
    np.testing.assert_allclose(mask[..., 0], want, atol=1e-6)
    np.testing.assert_allclose(img, cv2.resize(f.sample.load_bgr(), (64, 64), interpolation=cv2.INTER_LANCZOS4), atol=1e-6)
    assert img.shape == (64, 64, 3) and mask.shape == (64, 64, 1)


@pytest.mark.parametrize("model_ft", ["f", "head"])
def test_other_face_type_recrops_image_and_label_together(xseg_faces, model_ft):
    f = scan(xseg_faces)[1]
    ft = FaceType.parse(model_ft)
    _img, mask = image_and_mask(f.sample, f.polys, 128, ft)
    # independent: move the polygon itself into the model's crop and rasterise it there
    mat = get_transform_mat(f.sample.landmarks, 128, ft)
    moved = [Poly(p.type, transform_points(p.pts, mat)) for p in f.polys]
    assert _iou(mask[..., 0], rasterize(moved, (128, 128))[..., 0]) > 0.95


def test_augment_is_seeded_binary_and_keeps_the_label_on_the_face(xseg_faces):
    faces = scan(xseg_faces)
    a = image_and_mask(faces[0].sample, faces[0].polys, 64, FaceType.WHOLE_FACE)
    bg = image_and_mask(faces[1].sample, faces[1].polys, 64, FaceType.WHOLE_FACE)
    out1 = augment(*a, bg, np.random.RandomState(5))
    out2 = augment(*a, bg, np.random.RandomState(5))
    np.testing.assert_array_equal(out1[0], out2[0])
    np.testing.assert_array_equal(out1[1], out2[1])
    ious = []
    for seed in range(12):
        img, m = augment(*a, bg, np.random.RandomState(seed))
        assert img.dtype == np.float32 and img.shape == (64, 64, 3) and 0 <= img.min() and img.max() <= 1
        assert set(np.unique(m)) <= {0.0, 1.0}
        label = a[1][..., 0]
        ious.append(max(_iou(m[..., 0], label), _iou(m[..., 0], label[:, ::-1])))  # DFL flips with p 0.4
        assert 0.8 < m.mean() / label.mean() < 1.25  # scale ±5 % and the grid warp keep the area
    # rotation ±10°, shift ±5 % and the grid warp: the label moves with the face, it is not replaced
    assert min(ious) > 0.5 and np.median(ious) > 0.7, ious
    assert not np.array_equal(out1[0], augment(*a, bg, np.random.RandomState(6))[0])


def test_random_circle_faded_formula():
    rs = np.random.RandomState(3)
    draws = np.random.RandomState(3)
    start = draws.randint(32)
    end = start + draws.randint(32 - start)
    cr, cc = draws.randint(32), draws.randint(32)
    m = random_circle_faded(32, rs)[..., 0]
    for r, c in [(0, 0), (cr, cc), (31, 5), (10, 20)]:
        d = np.hypot(r - cr, c - cc)
        assert m[r, c] == pytest.approx(np.clip(1 - (d - start) / max(end, 1), 0, 1), abs=1e-6)


def test_filter_chances_and_rgb_levels_range():
    img = np.random.default_rng(0).random((32, 32, 3), dtype=np.float32)
    assert random_resize(img, np.random.RandomState(0), cv2.INTER_LINEAR, chance=0) is img
    assert random_jpeg(img, np.random.RandomState(0), chance=0) is img
    assert not np.array_equal(random_jpeg(img, np.random.RandomState(0), chance=100), img)
    out = random_rgb_levels(img, np.random.RandomState(1))
    assert out.shape == img.shape and 0 <= out.min() and out.max() <= 1
    half = np.zeros((32, 32, 1), np.float32)
    half[:, :16] = 1
    blended = random_rgb_levels(img, np.random.RandomState(1), mask=half)
    np.testing.assert_array_equal(blended[:, 16:], img[:, 16:])  # blended through the mask only
    np.testing.assert_allclose(blended[:, :16], out[:, :16], atol=1e-6)
