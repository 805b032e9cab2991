"""The device pipeline (engine.data.device): same outputs as "fast" on the same draws, DFL's warp goldens at
the fast path's tolerances, DFL's distributions from the per-sample streams, a deterministic and resumable
stream whatever the worker count, the packed transport, and the Triton path under the interpreter.

The CUDA-only parts (side-stream copy and augmentation, Triton compiled) are marked `gpu`; on CPU the
same code runs with the C warp kernel (and, for the bookkeeping of the batch in flight, `ahead=True`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_faces import synthetic_face, write_synthetic_faceset

from engine.data import device as dv
from engine.data.auto import WORKERS_CAP, resolve_pipeline, resolve_workers
from engine.data.loader import build_loader
from engine.faces.faceset import FaceData
from engine.data.sample import (SampleOptions, draw_augmentation, prepare_ct_ref, prepare_face, process_dfl,
                                process_fast_batch)
from engine.recipe.specs import DataSpec
from kernels.warp import SAEHD_SCALE_RANGE, WarpBatchParams, random_warp_params

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "warp"
SHARED = Path(os.environ.get("TORCHSAE_SHARED_GOLDEN") or ROOT.parent / "shared" / "golden") / "warp"
GOLDEN_FILES = sorted(GOLDEN.glob("warp_*saehd*.npz")) + sorted(SHARED.glob("warp_res128_saehd*.npz"))
EXACT = 3e-5  # no grid warp: cv2.warpAffine's coordinates reproduced (tests/kernels/test_warp.py)


def _faces(n: int, size: int, face_type: str, seed: int) -> list[FaceData]:
    rng = np.random.default_rng(seed)
    return [FaceData(image=img, landmarks=lm, face_type=face_type)
            for img, lm in (synthetic_face(rng, size=size, face_type=face_type) for _ in range(n))]


def _device_side(prep, seeds, opts, refs=None, impl="auto"):
    """augment_side on DFL's own draws for `seeds` (what process_fast_batch uses)."""
    drawn = [draw_augmentation(int(s), opts) for s in seeds]
    bp = WarpBatchParams.from_dfl([p for p, _ in drawn])
    hsv = None
    if opts.random_hsv_power:
        hsv = torch.tensor([[h.dh, h.ds, h.dv] for _, h in drawn], dtype=torch.float32)
    img = torch.from_numpy(np.stack([p.image for p in prep]).transpose(0, 3, 1, 2).copy()).float() / 255
    masks = torch.from_numpy(np.stack([p.masks for p in prep]).transpose(0, 3, 1, 2).copy()).float() / 255
    ref = None
    if refs is not None:
        ref = torch.from_numpy(np.stack([prepare_ct_ref(r, opts.resolution) for r in refs]).transpose(0, 3, 1, 2)
                               .copy()).float() / 255
    return dv.augment_side(img, masks, bp, opts, ref=ref, hsv=hsv, impl=impl)


@pytest.mark.parametrize("ct", [None, "lct"])
def test_device_equals_fast_on_the_same_draws(ct):
    """Same parameters -> the same batch as "fast" (only the HSV and ct float rounding differ), and so
    within fast's documented bounds of the DFL oracle."""
    faces = _faces(3, 256, "wf", 11)
    refs = [f.image for f in _faces(3, 256, "wf", 12)] if ct else None
    opts = SampleOptions(resolution=128, face_type="f", random_warp=True, random_flip=True, random_hsv_power=0.1,
                         ct_mode=ct)
    seeds = [3, 4, 5]
    prep = [prepare_face(f, opts) for f in faces]
    got = _device_side(prep, seeds, opts, refs)
    fast = process_fast_batch(np.stack([p.image for p in prep]), np.stack([p.masks for p in prep]), seeds, opts,
                              None if refs is None else np.stack([prepare_ct_ref(r, 128) for r in refs]),
                              [np.random.RandomState(s) for s in seeds])
    for k in fast:
        err = (got[k] - fast[k]).abs().max().item()
        assert err < 2e-4, f"{k}: device vs fast max |Δ| {err:.3g}"
    dfl = [process_dfl(f, s, opts, None if refs is None else r, np.random.RandomState(s))
           for f, s, r in zip(faces, seeds, refs or [None] * 3)]
    e = np.abs(np.stack([o.target for o in dfl]).transpose(0, 3, 1, 2) - got["target"].numpy())
    assert e.mean() < 5e-3 and np.percentile(e, 99) < 3e-2  # tests/data/test_sample_fast.py's bounds
    e = np.abs(np.stack([o.warped for o in dfl]).transpose(0, 3, 1, 2) - got["warped"].numpy())
    assert e.mean() < 1e-2 and np.percentile(e, 99) < 0.1


@pytest.mark.parity
@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_warp_goldens_through_the_device_pipeline(path):
    """DFL's recorded warps (image and mask of one sample) through augment_side: the target and the masks
    to EXACT, the network input at the fast path's golden bound (mean |Δ| < 0.02)."""
    d = dict(np.load(path))
    meta = json.loads(path.with_suffix(".json").read_text())
    p = {k: d[k] for k in ("mapx", "mapy", "rmat", "umat")}
    p.update(w=int(d["w"]), rw=None if int(d["rw"]) < 0 else int(d["rw"]), flip=bool(d["flip"]))
    res = int(d["image"].shape[0])
    opts = SampleOptions(resolution=max(res, 16), face_type="f", random_warp=True, random_flip=True)
    img = torch.from_numpy(d["image"].transpose(2, 0, 1).copy())[None]
    mask = torch.from_numpy(d["mask"].transpose(2, 0, 1).copy())[None]
    out = dv.augment_side(img, torch.cat([mask, mask], 1), WarpBatchParams.from_dfl([p]), opts)
    hwc = {k: v[0].numpy().transpose(1, 2, 0) for k, v in out.items()}
    np.testing.assert_allclose(hwc["target"], np.clip(d["out_w0_t1_b1_cubic"], 0, 1), atol=EXACT, err_msg=str(meta))
    np.testing.assert_allclose(hwc["mask"], d["out_w0_t1_b0_mask_linear"], atol=EXACT)
    peak = d["out_w0_t1_b0_mask_linear"].max()
    np.testing.assert_allclose(hwc["mask_em"], d["out_w0_t1_b0_mask_linear"] / (peak or 1), atol=EXACT / (peak or 1))
    err = np.abs(hwc["warped"] - np.clip(d["out_w1_t1_b1_cubic"], 0, 1))
    assert err.mean() < 0.02, f"network input: mean |device − DFL| = {err.mean():.4f}"


def test_per_sample_draws_follow_dfl_distributions():
    """draw_side: the warp law of kernels.warp (checked against DFL's there) from per-sample streams, DFL's
    HSV law, Haar rotations for idt, unit directions for sot; a sample's draws depend on its key only."""
    opts = SampleOptions(resolution=64, face_type="f", random_flip=True, random_hsv_power=0.2, ct_mode="idt")
    keys = list(range(2000))
    d = dv.draw_side(keys, opts)
    assert abs(d["flip"].float().mean().item() - 0.4) < 4 * np.sqrt(0.24 / len(keys))
    rmat = d["rmat"].numpy()
    scale = np.hypot(rmat[:, 0, 0], rmat[:, 0, 1])
    assert scale.min() >= 1 / 1.15 - 1e-9 and scale.max() <= 1.15 + 1e-9 and scale.std() > 0.05
    ref = random_warp_params(2000, 64, True, scale_range=SAEHD_SCALE_RANGE, generator=torch.Generator().manual_seed(0))
    ours, theirs = d["nodes"][:, 0, 4, 4].numpy(), ref.nodes[:, 0, 4, 4].numpy()  # the central node: all cell sizes
    q = np.linspace(0.1, 0.9, 9)
    np.testing.assert_allclose(np.quantile(ours, q), np.quantile(theirs, q), atol=0.15 * theirs.std())
    h = max(1, int(360 * 0.2 * 0.5))
    dh, ds, dv_ = d["hsv"].numpy().T
    assert set(np.unique(dh)) == set(range(-h, h + 1)) and np.all(np.abs(ds) <= 0.1) and np.all(np.abs(dv_) <= 0.1)
    assert abs(ds.mean()) < 0.005 and abs(dv_.mean()) < 0.005
    rots = d["ct_draws"].numpy()
    assert rots.shape == (2000, 2, 20, 3, 3)
    np.testing.assert_allclose(np.linalg.det(rots), 1.0, atol=1e-5)
    again = dv.draw_side(keys[5:8], opts)
    for k in again:
        assert torch.equal(again[k], d[k][5:8]), k
    assert not torch.equal(dv.draw_side([1], opts)["nodes"], dv.draw_side([2], opts)["nodes"])
    assert not dv.draw_side(keys[:50], SampleOptions(resolution=64, face_type="f", random_flip=False))["flip"].any()


def test_packer_round_trip():
    pk = dv.Packer()
    arrays = {"a": np.arange(30, dtype=np.uint8).reshape(2, 5, 3), "b": np.linspace(0, 1, 7).astype(np.float32),
              "c": np.eye(3)[None].repeat(2, 0), "d": np.array([True, False, True])}
    for k, v in arrays.items():
        pk.add(k, v.shape, v.dtype)
    for k, v in arrays.items():
        pk.view(k)[...] = v
    assert all(off % 64 == 0 for _, off, _, _ in pk.layout)
    out = dv.unpack(pk.buffer(), pk.layout)
    for k, v in arrays.items():
        np.testing.assert_array_equal(out[k].numpy(), v)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("device")
    write_synthetic_faceset(root / "src", 6, size=128, face_type="wf", seed=1, xseg_every=3)
    write_synthetic_faceset(root / "dst", 5, size=128, face_type="wf", seed=2)
    return root


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("ct", ["sot", "rct"])
def test_stream_is_deterministic_resumable_and_worker_independent(root, ct):
    spec = DataSpec(src=str(root / "src"), dst=str(root / "dst"), pipeline="device", ct_mode=ct,
                    random_hsv_power=0.2, random_src_flip=True)
    kw = dict(resolution=64, face_type="f", batch_size=3, seed=5)
    with build_loader(spec, workers=2, **kw) as a:
        first = [next(a) for _ in range(3)]
        state = json.loads(json.dumps(a.state_dict()))
        cont = [next(a) for _ in range(2)]
    assert state["planner"]["step"] == 3
    with build_loader(spec, workers=0, **kw) as b:
        assert all(_equal(x, next(b)) for x in first)
        b.load_state_dict(state)
        assert all(_equal(x, next(b)) for x in cont)
    # one batch in flight (what CUDA does): the state is still the returned batch's
    with build_loader(spec, workers=0, **kw) as c:
        ahead = dv.DeviceLoader(c.loader, c.augment, "cpu", ahead=True)
        assert _equal(next(ahead), first[0]) and ahead.state_dict()["planner"]["step"] == 1
        next(ahead), next(ahead)
        assert ahead.state_dict() == state
        ahead.load_state_dict(state)
        assert _equal(next(ahead), cont[0])
    with build_loader(spec, workers=0, **dict(kw, seed=6)) as d:
        assert not _equal(next(d), first[0])


def test_in_process_loader_prefills_the_cache_with_a_pool(root, monkeypatch):
    """workers = 0: every face is decoded up front by a process pool (engine.data.prefill); the batches are
    those of a loader whose workers fill the cache lazily."""
    from engine.data import prefill

    monkeypatch.setattr(prefill, "INLINE_BELOW", 0)  # use the pool even for this small faceset
    monkeypatch.setattr("engine.data.loader.usable_cores", lambda: 2)
    spec = DataSpec(src=str(root / "src"), dst=str(root / "dst"), pipeline="device", ct_mode="rct")
    kw = dict(resolution=64, face_type="f", batch_size=3, seed=2)
    with build_loader(spec, workers=0, **kw) as a, build_loader(spec, workers=2, **kw) as b:
        caches = a.batches._caches
        assert all(bool((c.status == 1).all()) for c in caches.values())
        assert bool((caches["dst"].ct_status == 1).all())
        assert all(int(c.status.sum()) == 0 for c in b.batches._caches.values())  # lazy: nothing yet
        for _ in range(2):
            assert _equal(next(a), next(b))


def test_batch_shapes_ranges_and_pretrain(root):
    spec = DataSpec(src=str(root / "src"), dst=str(root / "dst"), pretrain_faceset=str(root / "src"),
                    pipeline="device", ct_mode="mkl")
    with build_loader(spec, resolution=48, face_type="f", batch_size=2, seed=0, workers=0) as a:
        b = next(a)
        assert a.describe() == {"pipeline": "device", "workers": 0, "device": "cpu"}
    for k, v in b.items():
        assert v.dtype == torch.float32 and v.shape == (2, 1 if "m" in k.split("_")[1] else 3, 48, 48), k
        assert 0 <= v.min() and v.max() <= 1
    assert b["target_srcm_em"].amax((1, 2, 3)).tolist() == [1.0, 1.0]
    with build_loader(spec, resolution=64, face_type="f", batch_size=2, seed=0, workers=0, pretrain=True) as p:
        pb = next(p)
        assert torch.equal(pb["warped_src"], pb["target_src"])  # pretrain: no warp, no HSV, no ct


def test_auto_pipeline_and_workers(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_pipeline("auto", cuda)[0] == "device" and resolve_pipeline("auto", cpu)[0] == "device"
    assert resolve_pipeline("fast", cuda) == ("fast", "requested")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(2)), raising=False)
    assert resolve_workers("auto", cpu)[0] == 0  # the step's threads own both cores
    assert resolve_workers("auto", cuda)[0] == 1
    assert resolve_workers(3, cpu) == (3, "requested")
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(64)), raising=False)
    n, why = resolve_workers("auto", cuda)
    assert n == WORKERS_CAP and "capped" in why
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # torchrun, 8 GPUs sharing 64 cores
    assert resolve_workers("auto", cuda)[0] == 7
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)), raising=False)
    assert resolve_workers("auto", cuda)[0] == 1


def test_triton_device_pipeline_under_interpreter():
    """augment_side with the Triton sampler (numpy interpreter, tiny shapes) against the C kernel."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    proc = subprocess.run([sys.executable, __file__], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "device interpreter checks passed" in proc.stdout


def _interpreter_checks() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1"
    faces = _faces(2, 64, "f", 3)
    for res in (32, 64):
        opts = SampleOptions(resolution=res, face_type="f", random_warp=True, random_flip=True, random_hsv_power=0.1)
        prep = [prepare_face(f, opts) for f in faces]
        a = _device_side(prep, [1, 2], opts, impl="triton")
        b = _device_side(prep, [1, 2], opts, impl="fast")
        for k in a:
            tol = 2e-4 if k == "warped" else 3e-5  # tests/kernels/test_warp_triton.py's bounds
            err = (a[k] - b[k]).abs().max().item()
            assert err <= tol, f"res {res} {k}: triton vs fast max |Δ| {err:.3g}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_side_stream_pipeline_matches_cpu(root):
    """On CUDA: batches arrive on the GPU through the side stream, equal to the CPU device pipeline's up to
    the kernels' float rounding, and the stream resumes exactly."""
    spec = DataSpec(src=str(root / "src"), dst=str(root / "dst"), pipeline="device", ct_mode="rct",
                    random_hsv_power=0.1)
    kw = dict(resolution=64, face_type="f", batch_size=4, seed=1, workers=2)
    with build_loader(spec, device="cuda", **kw) as g, build_loader(spec, device="cpu", **kw) as c:
        for _ in range(3):
            x, y = next(g), next(c)
            assert x["warped_src"].is_cuda
            for k in x:
                assert (x[k].cpu() - y[k]).abs().max().item() < 2e-3, k
        state = g.state_dict()
        after = next(g)
        g.load_state_dict(state)
        assert _equal({k: v.cpu() for k, v in next(g).items()}, {k: v.cpu() for k, v in after.items()})


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _interpreter_checks()
    print("device interpreter checks passed")
