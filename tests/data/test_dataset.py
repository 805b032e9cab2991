"""engine.data.yaw and engine.data.dataset: index hosts, uniform yaw, batch plans, batches, bad files."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from synthetic_faces import synthetic_face, write_synthetic_faceset

from engine.data.dataset import BATCH_KEYS, CACHE_PREFIX, BatchPlan, BatchPlanner, FaceCache, SAEHDBatches
from engine.data.sample import SampleOptions
from engine.data.yaw import ShuffleIndex, UniformYawIndex, yaw_bins
from engine.errors import DataError
from engine.faces import dfljpg
from engine.faces.faceset import Faceset


@pytest.fixture(scope="module")
def facesets(tmp_path_factory):
    root = tmp_path_factory.mktemp("fs")
    write_synthetic_faceset(root / "src", 6, size=128, face_type="wf", seed=1, xseg_every=2)
    write_synthetic_faceset(root / "dst", 5, size=128, face_type="wf", seed=2)
    return root


def _opts(**kw) -> SampleOptions:
    return SampleOptions(resolution=64, face_type="f", **kw)


# ------------------------------------------------------------------------------------------ index hosts


def test_yaw_bins_hand_computed():
    """DFL bins s = -yaw over linspace(-1.2, 1.2, 128): bin 0 takes everything below edge 1, bin 127
    everything >= 1.2, bin 63 is [-0.00945, 0.00945); NaN falls in no bin; empty bins are dropped."""
    yaws = np.array([0.0, 5.0, -5.0, -1.2, 1.2, np.nan, 0.001, -0.0095])
    bins = yaw_bins(yaws)
    assert [b.tolist() for b in bins] == [[1, 4], [0, 6], [7], [2, 3]]


def test_shuffle_index_epochs_and_state():
    a = ShuffleIndex(7, seed=5, key=(1,))
    first = [a.next() for _ in range(7)]
    second = [a.next() for _ in range(7)]
    assert sorted(first) == sorted(second) == list(range(7)) and first != second
    state = a.state_dict()
    after = [a.next() for _ in range(10)]
    b = ShuffleIndex(7, seed=5, key=(1,))
    b.load_state_dict(state)
    assert [b.next() for _ in range(10)] == after
    assert [ShuffleIndex(7, seed=6, key=(1,)).next() for _ in range(7)] != first


def test_uniform_yaw_index_draws_every_bin_equally():
    """Three bins of 1, 2 and 5 samples: each block of 3 draws visits each bin once (Index2DHost)."""
    yaws = -np.array([-1.0, 0.0, 0.001, 1.0, 1.0001, 1.0002, 1.0003, 1.0004])
    idx = UniformYawIndex(yaws, seed=0, key=(1,))
    assert [b.tolist() for b in idx.bins] == [[0], [1, 2], [3, 4, 5, 6, 7]]
    draws = [idx.next() for _ in range(30)]
    for k in range(10):
        block = draws[3 * k: 3 * k + 3]
        assert sorted(0 if d == 0 else 1 if d in (1, 2) else 2 for d in block) == [0, 1, 2]
    assert draws.count(0) == 10
    assert draws.count(1) == draws.count(2) == 5  # the 2-sample bin alternates within its own epochs


# ------------------------------------------------------------------------------------------ planner


def test_planner_deterministic_and_resumable():
    def plans(p, n):
        return [p.next_plan() for _ in range(n)]

    a = plans(BatchPlanner(10, 6, 4, seed=3, ct=True), 5)
    assert a == plans(BatchPlanner(10, 6, 4, seed=3, ct=True), 5)
    assert a != plans(BatchPlanner(10, 6, 4, seed=4, ct=True), 5)
    assert [p.step for p in a] == [0, 1, 2, 3, 4]
    src = [i for p in a for i in p.src]
    assert sorted(src[:10]) == list(range(10))  # first src epoch is a permutation
    ct = [i for p in a for i in p.ct]
    assert sorted(ct[:6]) == sorted(ct[6:12]) == list(range(6))  # ct partners: shuffled dst epochs
    assert len({k for p in a for k in p.src_keys + p.dst_keys}) == 40  # fresh sample keys everywhere

    p = BatchPlanner(10, 6, 4, seed=3, ct=True)
    plans(p, 2)
    state = p.state_dict()
    q = BatchPlanner(10, 6, 4, seed=3, ct=True)
    q.load_state_dict(state)
    assert plans(q, 3) == a[2:]
    assert BatchPlanner(10, 6, 4, seed=3).next_plan().ct is None


def test_plan_shard_concatenates_to_the_global_batch():
    plan = BatchPlanner(10, 6, 4, seed=0, ct=True).next_plan()
    parts = [plan.shard(r, 2) for r in range(2)]
    for field in ("src", "src_keys", "dst", "dst_keys", "ct"):
        assert sum((getattr(x, field) for x in parts), ()) == getattr(plan, field)
    with pytest.raises(DataError, match="not divisible"):
        plan.shard(0, 3)


# ------------------------------------------------------------------------------------------ batches


@pytest.mark.parametrize("mode", ["dfl", "fast"])
def test_batch_dict(facesets, mode):
    src, dst = Faceset(facesets / "src"), Faceset(facesets / "dst")
    batches = SAEHDBatches(src, dst, _opts(random_hsv_power=0.2, ct_mode="rct"), _opts(random_flip=True), mode=mode)
    plan = BatchPlanner(len(src), len(dst), 3, seed=0, ct=True).next_plan()
    out = batches[plan]
    assert out["_step"] == 0 and out["_bad"] == []
    assert tuple(k for k in out if not k.startswith("_")) == BATCH_KEYS
    for k in BATCH_KEYS:
        c = 1 if k.endswith(("m", "_em")) else 3
        t = out[k]
        assert t.shape == (3, c, 64, 64) and t.dtype == torch.float32, k
        assert 0 <= t.min() and t.max() <= 1
    assert batches[plan]["warped_src"].equal(out["warped_src"])  # a batch is a function of its plan
    batches.close()


def test_modes_agree(facesets):
    src, dst = Faceset(facesets / "src"), Faceset(facesets / "dst")
    plan = BatchPlanner(len(src), len(dst), 4, seed=1).next_plan()
    dfl = SAEHDBatches(src, dst, _opts(), _opts(), mode="dfl")[plan]
    fast_b = SAEHDBatches(src, dst, _opts(), _opts(), mode="fast")
    fast = fast_b[plan]
    for k in BATCH_KEYS:
        assert (dfl[k] - fast[k]).abs().mean() < 1e-2, k
    fast_b.close()


@pytest.mark.parametrize("mode", ["dfl", "fast"])
def test_undecodable_file_is_replaced_by_the_next_face(facesets, tmp_path, mode):
    paths = write_synthetic_faceset(tmp_path / "src", 4, size=128, face_type="f", seed=5)
    src = Faceset(tmp_path / "src")
    dst = Faceset(facesets / "dst")
    paths[1].write_bytes(b"\xff\xd8 this is not a jpeg any more")  # broken after the scan
    batches = SAEHDBatches(src, dst, _opts(), _opts(), mode=mode)
    plan = BatchPlan(0, (1, 0), (11, 12), (0, 1), (13, 14))
    out = batches[plan]
    assert [(label, name) for label, name, _ in out["_bad"]] == [(str(tmp_path / "src"), paths[1].name)]
    same_as = batches[BatchPlan(0, (2, 0), (11, 12), (0, 1), (13, 14))]
    for k in BATCH_KEYS:
        assert out[k].equal(same_as[k]), k  # replaced by index 2, deterministically
    assert batches[plan]["_bad"] == []  # known bad: skipped without another decode attempt or report
    batches.close()
    for p in paths:
        p.write_bytes(b"garbage")
    fresh = SAEHDBatches(src, dst, _opts(), _opts(), mode=mode)
    with pytest.raises(DataError, match=f"{tmp_path / 'src'}: none of its 4 faces can be decoded"):
        fresh[plan]
    fresh.close()


def test_faceset_skips_mark_only_and_names_empty_folders(tmp_path, caplog):
    folder = tmp_path / "mixed"
    write_synthetic_faceset(folder, 2, size=128, face_type="f", seed=0)
    img, lm = synthetic_face(np.random.default_rng(0), size=128, face_type="f")
    dfljpg.write(folder / "zz_mark.jpg", img, {"face_type": "mark_only", "landmarks": lm})
    with caplog.at_level(logging.WARNING, logger="torchsae.data"):
        fs = Faceset(folder)
    assert len(fs) == 2 and "1 mark_only" in caplog.text and "zz_mark.jpg" in caplog.text
    only = tmp_path / "marks"
    only.mkdir()
    dfljpg.write(only / "a.jpg", img, {"face_type": "mark_only", "landmarks": lm})
    with pytest.raises(DataError, match=f"{only}: no usable aligned faces"):
        Faceset(only)
    with pytest.raises(DataError, match="missing: faceset not found"):
        Faceset(tmp_path / "missing")


def test_scan_skips_bad_files_with_one_warning(tmp_path, caplog):
    folder = tmp_path / "f"
    paths = write_synthetic_faceset(folder, 3, size=128, face_type="f", seed=0)
    cv2.imwrite(str(folder / "plain.jpg"), np.zeros((32, 32, 3), np.uint8))  # no DFL data, no landmarks
    paths[0].write_bytes(paths[0].read_bytes()[:200])  # truncated
    with caplog.at_level(logging.WARNING, logger="torchsae.data"):
        fs = Faceset(folder)
    assert len(fs) == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 2" in warnings[0].getMessage()


def test_yaws_for_uniform_sampling(facesets):
    yaws = Faceset(facesets / "src").yaws()
    assert yaws.shape == (6,) and np.isfinite(yaws).all() and np.abs(yaws).max() < np.deg2rad(45)


def test_face_cache_folders_of_dead_runs_are_removed(tmp_path):
    # A run killed with -9 never runs its finalizer: the next cache created in the same place removes the
    # folder, because the pid in its name no longer exists; a live owner's folder (ours) stays.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    stale = tmp_path / f"{CACHE_PREFIX}{dead}-abc123"
    stale.mkdir()
    (stale / "image.u8").write_bytes(b"\0" * 1024)
    other = tmp_path / "unrelated-folder"
    other.mkdir()
    live = FaceCache(2, 8, cache_dir=tmp_path)
    assert not stale.exists() and other.exists()
    assert Path(live.dir).name.startswith(f"{CACHE_PREFIX}{os.getpid()}-")
    again = FaceCache(2, 8, cache_dir=tmp_path)  # a second cache of a live process leaves the first alone
    assert Path(live.dir).exists() and Path(again.dir).exists()
    live.close()
    again.close()
    assert not Path(live.dir).exists()
