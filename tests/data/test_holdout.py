"""engine.data.holdout: the deterministic held-out split, applied by the loader, recorded in checkpoints."""

from __future__ import annotations

import pytest
from synthetic_faces import write_synthetic_faceset

from engine.data import holdout
from engine.data.loader import build_loader
from engine.errors import DataError
from engine.recipe.specs import DataSpec


def _runs(idx: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in idx:
        if out and out[-1][-1] == i - 1:
            out[-1].append(i)
        else:
            out.append([i])
    return out


@pytest.mark.parametrize("n,fraction,block", [(72, 0.1, 8), (472, 0.1, 8), (6, 0.1, 8), (100, 0.5, 3), (2, 0.5, 8),
                                              (37, 0.25, 1), (1000, 0.01, 16)])
def test_split_counts_runs_and_spread(n, fraction, block):
    idx = holdout.held_out_indices(n, fraction, block)
    k = min(max(1, round(n * fraction)), n - 1)
    assert len(idx) == k and len(set(idx)) == k and idx == sorted(idx) and 0 <= idx[0] and idx[-1] < n
    runs = _runs(idx)
    assert all(len(r) <= max(block, 1) or block >= k for r in runs)
    m = -(-k // min(block, k))  # ceil(k / b): the number of runs asked for
    assert len(runs) <= m
    if m > 1:  # spread over the whole sequence, not bunched at one end
        assert idx[0] < n / m and idx[-1] >= n - n / m
    assert holdout.held_out_indices(n, fraction, block) == idx  # a pure function


def test_split_hand_checked_and_edge_cases():
    # 72 dst faces, 10 %: k = 7 faces in one run centred in the sequence
    assert holdout.held_out_indices(72, 0.1, 8) == list(range(32, 39))
    # 20 faces, 30 %, runs of 2: k = 6 in 3 runs centred in thirds [0,6) [6,13) [13,20)
    assert holdout.held_out_indices(20, 0.3, 2) == [2, 3, 8, 9, 15, 16]
    assert holdout.held_out_indices(50, 0.0, 8) == []
    with pytest.raises(DataError, match="at least 2"):
        holdout.held_out_indices(1, 0.1, 8)


@pytest.fixture(scope="module")
def facesets(tmp_path_factory):
    root = tmp_path_factory.mktemp("holdout")
    write_synthetic_faceset(root / "src", 12, size=96, face_type="wf", seed=1)
    write_synthetic_faceset(root / "dst", 9, size=96, face_type="wf", seed=2)
    write_synthetic_faceset(root / "eval_dst", 3, size=96, face_type="wf", seed=3)
    return root


def _loader(root, **kw):
    spec = DataSpec(src=str(root / "src"), dst=str(root / "dst"), workers=0, **kw)
    return build_loader(spec, resolution=64, face_type="wf", batch_size=4, seed=0)


def test_loader_never_sees_held_out_faces(facesets):
    with _loader(facesets, eval_fraction=0.25, eval_block=2) as loader:
        held = loader.held_out
        assert len(held.src.names) == 3 and len(held.dst.names) == 2  # round(12/4), round(9/4)
        src_names = [s.name for s in loader.batches.src.samples]
        dst_names = [s.name for s in loader.batches.dst.samples]
        assert len(src_names) == 9 and len(dst_names) == 7
        assert not holdout.names_overlap(held.src.names, src_names)
        assert not holdout.names_overlap(held.dst.names, dst_names)
        # the planner draws indices over the training faces only: one full epoch touches each exactly once
        for _ in range(3):
            next(loader)
        assert loader.state_dict()["planner"]["src"]["epoch"] >= 1
    rec = held.record()
    assert holdout.from_record(rec) == held
    assert rec["src"]["folder"] == str(facesets / "src") and rec["fraction"] == 0.25


def test_explicit_eval_folder_keeps_the_training_faceset_whole(facesets):
    with _loader(facesets, eval_fraction=0.25, eval_dst=str(facesets / "eval_dst")) as loader:
        held = loader.held_out
        assert held.dst.explicit and len(held.dst.names) == 3 and held.dst.folder == str(facesets / "eval_dst")
        assert len(loader.batches.dst.samples) == 9  # dst trains on all of its faces
        assert len(loader.batches.src.samples) == 9


def test_no_split_by_default(facesets):
    with _loader(facesets) as loader:
        assert loader.held_out is None
        assert len(loader.batches.src.samples) == 12


def test_malformed_record_is_a_clear_error():
    with pytest.raises(DataError, match="malformed held-out record"):
        holdout.from_record({"version": 1, "src": {}}, "x.pt")
