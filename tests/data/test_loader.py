"""engine.data.loader: resumable, deterministic batches from worker processes; pretrain; DDP shards."""

from __future__ import annotations

import json
import logging
import os

import cv2
import pytest
import torch

from synthetic_faces import write_synthetic_faceset

from engine.data.dataset import BATCH_KEYS, SAEHDBatches
from engine.data.loader import build_loader
from engine.errors import CheckpointError, DataError
from engine.recipe.specs import DataSpec


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    write_synthetic_faceset(root / "src", 6, size=128, face_type="wf", seed=1, xseg_every=3, max_yaw_deg=40)
    write_synthetic_faceset(root / "dst", 5, size=128, face_type="wf", seed=2)
    write_synthetic_faceset(root / "pre", 5, size=128, face_type="wf", seed=3)
    return root


def _spec(root, **kw) -> DataSpec:
    return DataSpec(src=str(root / "src"), dst=str(root / "dst"), pretrain_faceset=str(root / "pre"), **kw)


def _loader(root, spec_kw=None, **kw):
    args = dict(resolution=64, face_type="f", batch_size=4, seed=7)
    args.update(kw)
    return build_loader(_spec(root, **(spec_kw or {})), **args)


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_the_exact_stream_with_any_worker_count(root):
    """State after 3 batches (taken from 2 worker processes with prefetching) restored into an in-process
    loader gives the same next batches as continuing; sot colour transfer, HSV and uniform yaw included."""
    kw = dict(pipeline="fast", ct_mode="sot", random_hsv_power=0.2, uniform_yaw=True, random_src_flip=True)
    with _loader(root, kw, workers=2) as a:
        for _ in range(3):
            next(a)
        state = json.loads(json.dumps(a.state_dict()))  # plain data: survives any checkpoint format
        cont = [next(a) for _ in range(3)]
    assert state["planner"]["step"] == 3
    with _loader(root, kw, workers=0) as b:
        b.load_state_dict(state)
        resumed = [next(b) for _ in range(3)]
    for x, y in zip(cont, resumed):
        assert _equal(x, y)
        assert tuple(x) == BATCH_KEYS


def test_dfl_mode_is_deterministic_and_resumable(root):
    kw = dict(pipeline="dfl", ct_mode="idt", random_hsv_power=0.1)
    with _loader(root, kw, workers=0) as a:
        first = [next(a) for _ in range(2)]
        state = a.state_dict()
        third = next(a)
        a.load_state_dict(state)  # rewinding an open loader drops its prefetched batches
        assert _equal(next(a), third)
    with _loader(root, kw, workers=0) as b:
        assert all(_equal(x, next(b)) for x in first)
    with _loader(root, kw, workers=0, seed=8) as c:
        assert not _equal(next(c), first[0])


class _ThreadProbe(SAEHDBatches):
    def __getitem__(self, plan):
        out = super().__getitem__(plan)
        out["_cv2_threads"] = cv2.getNumThreads()
        return out


def test_forked_workers_never_touch_opencvs_thread_pool(root, tmp_path, monkeypatch):
    """OpenCV's pool is not fork-safe: a forked worker that called cv2.setNumThreads hung for ever on a
    condition variable of the parent's pool threads. Workers are forked while OpenCV is single-threaded
    (they run cv2 inline), no worker changes OpenCV's threads, and the parent gets its setting back."""
    calls = tmp_path / "calls"
    real = cv2.setNumThreads

    def recording(n):
        with open(calls, "a") as f:
            f.write(f"{os.getpid()} {n}\n")
        real(n)

    before = cv2.getNumThreads()
    monkeypatch.setattr(cv2, "setNumThreads", recording)
    with _loader(root, dict(pipeline="fast"), workers=2) as a:
        a.batches.__class__ = _ThreadProbe
        assert next(a)["_cv2_threads"] == 1
        next(a)
    assert {line.split()[0] for line in calls.read_text().splitlines()} == {str(os.getpid())}
    assert cv2.getNumThreads() == before


def test_ddp_ranks_read_disjoint_shards_that_cover_the_faceset(root):
    """Each rank samples its own strided shard (engine.data.shard) with its own stream: half the global
    batch per rank, shards disjoint and together the whole faceset, each rank's stream deterministic."""
    r0 = _loader(root, workers=0, rank=0, world_size=2)
    r1 = _loader(root, workers=0, rank=1, world_size=2)
    again = _loader(root, workers=0, rank=1, world_size=2)
    try:
        names = [{s.name for s in getattr(r.batches, side).samples} for r in (r0, r1) for side in ("src", "dst")]
        for side in (0, 1):
            a, b = names[side], names[2 + side]
            assert a and b and not a & b
        with _loader(root, workers=0) as whole:
            assert names[0] | names[2] == {s.name for s in whole.batches.src.samples}
        for _ in range(2):
            x, y = next(r0), next(r1)
            assert x["warped_src"].shape[0] == y["warped_src"].shape[0] == 2
            assert _equal(y, next(again))
        assert r0.state_dict()["seed"] != r1.state_dict()["seed"]
    finally:
        for r in (r0, r1, again):
            r.close()


def test_pretrain_reads_the_pretrain_faceset(root):
    with _loader(root, dict(ct_mode="rct", random_hsv_power=0.3), workers=0, pretrain=True) as pre:
        assert pre.batches.src is pre.batches.dst and pre.batches.src.label == str(root / "pre")
        o = pre.batches.opts["src"]
        assert (o.random_warp, o.random_flip, o.random_hsv_power, o.ct_mode) == (False, True, 0.0, None)
        assert pre._planner.ct_index is None and type(pre._planner.src_index).__name__ == "UniformYawIndex"
        batch = next(pre)
        # no random warp: the network input is the target (same affine and flip)
        assert torch.allclose(batch["warped_src"], batch["target_src"])
    with pytest.raises(DataError, match=r"\[data\].pretrain_faceset is empty"):
        build_loader(DataSpec(src=str(root / "src"), dst=str(root / "dst")), resolution=64, face_type="f",
                     batch_size=2, seed=0, pretrain=True)


def test_load_time_decode_failures_warn_once(tmp_path, root, caplog):
    paths = write_synthetic_faceset(tmp_path / "src", 3, size=128, face_type="f", seed=9)
    spec = DataSpec(src=str(tmp_path / "src"), dst=str(root / "dst"), workers=0, pipeline="dfl")
    loader = build_loader(spec, resolution=64, face_type="f", batch_size=3, seed=0)
    paths[2].write_bytes(b"not a jpeg")  # after the scan
    with caplog.at_level(logging.WARNING, logger="torchsae.data"):
        for _ in range(4):
            batch = next(loader)
            assert batch["warped_src"].shape == (3, 3, 64, 64)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("1 face(s) could not be decoded") and paths[2].name in warnings[0]
    loader.close()


def test_bad_state_and_options(root):
    with _loader(root, workers=0) as a:
        assert a.pin_memory is torch.cuda.is_available()
        with pytest.raises(CheckpointError, match="loader state"):
            a.load_state_dict({"planner": {}})
        with pytest.raises(CheckpointError, match="version 9"):
            a.load_state_dict({"version": 9, "planner": {}})
        with pytest.raises(CheckpointError, match="malformed sampler state"):
            a.load_state_dict({"version": 1, "planner": {"step": 3}})
    with pytest.raises(DataError, match=r"\[data\].pipeline = 'quick'"):
        _loader(root, workers=0, mode="quick")


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["fast", "device"])
def test_spawned_workers_share_the_fast_cache(root, pipeline):
    """Spawn-started workers (macOS/Windows default) reopen the cache files; same batches as in-process."""
    kw = dict(pipeline=pipeline)
    with _loader(root, kw, workers=2) as a, _loader(root, kw, workers=0) as b:
        getattr(a, "loader", a).multiprocessing_context = "spawn"
        for _ in range(3):
            assert _equal(next(a), next(b))
        cache = a.batches._caches["src"]
        assert set(cache.status.tolist()) <= {0, 1} and cache.status.sum() > 0  # filled by the workers
