"""The XSeg device pipeline (engine.xseg.device) against the numpy oracle (engine.xseg.augment): the same
output on the same draws (DFL's draws replayed, tests/xseg/xseg_replay.py), the warp's geometry at the fast
path's tolerances, the same distribution of every random draw, binary labels, a stream that depends on the
sample keys only (worker count, batch composition) and resumes exactly, and learning through it on CPU.

The op-level comparisons (each filter against its OpenCV call, JPEG against cv2's codec) are in
tests/data/test_device_filters.py and tests/data/test_device_jpeg.py. CUDA-only parts (the side stream, no
host synchronisation, CPU/GPU agreement, Triton's warp) are marked `gpu`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from xseg_helpers import xseg_recipe_text
from xseg_replay import batch_params, replay

from engine import recipe
from engine.data.device import unpack
from engine.faces.facetypes import FaceType
from engine.train import checkpoint as ck
from engine.xseg import device as xd
from engine.xseg.augment import augment, image_and_mask
from engine.xseg.data import CPU_PIPELINE, make_xseg_loader, resolve_pipeline
from engine.xseg.faces import scan
from engine.xseg.train import XSegTrainer, train_xseg
from kernels.warp import WarpBatchParams, gen_warp_params, warp_by_params, warp_params_from_uniforms

CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs CUDA")


def _nchw(x) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.stack(x).transpose(0, 3, 1, 2)))


def _pairs(faces, r):
    return [image_and_mask(f.sample, f.polys, r, FaceType.WHOLE_FACE) for f in faces]


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a > 0.5, b > 0.5
    return (a & b).sum((1, 2, 3)).float() / (a | b).sum((1, 2, 3)).clamp(min=1)


def _same_draws(pairs, seeds, r):
    """(device output, oracle output) for samples i -> face i % n with background face (i + 1) % n."""
    n = len(pairs)
    want_i, want_m, samples = [], [], []
    for s in seeds:
        (img, mask), bg = pairs[s % n], pairs[(s + 1) % n]
        wi, wm = augment(img, mask, bg, np.random.RandomState(s))
        want_i.append(wi)
        want_m.append(wm)
        samples.append(replay(s, r, True))
    p, warp, bg_warp = batch_params(samples)
    imgs = _nchw([pairs[s % n][0] for s in seeds])
    masks = _nchw([pairs[s % n][1] for s in seeds])
    bg = (_nchw([pairs[(s + 1) % n][0] for s in seeds]), _nchw([pairs[(s + 1) % n][1] for s in seeds]), bg_warp)
    got_i, got_m = xd.augment_batch(imgs, masks, p, warp, bg)
    return (got_i, got_m), (_nchw(want_i), _nchw(want_m)), p


@pytest.mark.parametrize("r", [64, 128])
def test_same_draws_give_the_numpy_oracles_output(xseg_faces, r):
    """Every step of §5.7 on DFL's own draws: the differences are the composed warp's interpolation
    (kernels/warp/fast.py: network input mean |Δ| < 0.02 against DFL), float rounding of the filters,
    which sharpening (gain up to ~50) amplifies, and the JPEG DCT (tests/data/test_device_jpeg.py).
    Measured over these 40 draws at 64 / 128: mean |Δ| 0.0034 / 0.0019, 99th percentile 0.047 / 0.031, worst
    sample 0.013 / 0.018, labels IoU >= 0.99."""
    (gi, gm), (wi, wm), p = _same_draws(_pairs(scan(xseg_faces), r), list(range(40)), r)
    err = (gi - wi).abs()
    per_sample = err.mean(dim=(1, 2, 3))
    print(f"R {r}: mean |Δ| {err.mean():.4f}, p99 {err.flatten().quantile(0.99):.4f}, worst sample "
          f"{per_sample.max():.4f}, label IoU min {_iou(gm, wm).min():.4f}")
    assert err.mean() < 8e-3 and err.flatten().quantile(0.99) < 0.1 and per_sample.max() < 0.04
    assert set(gm.unique().tolist()) <= {0.0, 1.0} and _iou(gm, wm).min() > 0.98
    assert gi.min() >= 0 and gi.max() <= 1
    # the draws exercised every branch somewhere in the batch
    for k in ("bg_on", "hsv_on", "detail_on", "blur_on", "resize_on", "jpeg_on"):
        assert p[k].any() and not p[k].all(), k


def test_warp_geometry_at_the_fast_paths_tolerances(xseg_faces):
    """Step 2 alone (every filter off, no background): the image as DFL's remap + warpAffine + flip (cubic,
    replicate) within the fast path's bound for the grid-warped network input (mean |Δ| < 0.02, as the warp
    goldens), the label as the reference's binarised warp (disagreement only along the outline)."""
    r = 64
    pairs = _pairs(scan(xseg_faces), r)
    seeds = list(range(12))
    wps = [replay(s, r, False)[1] for s in seeds]
    p = {k: torch.from_numpy(v) for k, v in xd.draw_xseg(seeds, r, False).items()}
    for k in ("flare_on", "detail_on", "blur_on", "resize_on", "jpeg_on"):
        p[k] = torch.zeros_like(p[k])
    p["hsv_on"] = torch.ones_like(p["hsv_on"])
    p["hsv"] = torch.zeros_like(p["hsv"])  # HSV shift by 0: OpenCV's round trip only
    imgs, masks = _nchw([pairs[s % 6][0] for s in seeds]), _nchw([pairs[s % 6][1] for s in seeds])
    gi, gm = xd.augment_batch(imgs, masks, p, WarpBatchParams.from_dfl(wps))
    want_i = [np.clip(warp_by_params(wp, pairs[s % 6][0], True, True, True, True), 0, 1) for s, wp in zip(seeds, wps)]
    want_m = [(warp_by_params(wp, pairs[s % 6][1], True, True, True, False) >= 0.5).astype(np.float32)
              for s, wp in zip(seeds, wps)]
    err = (gi - _nchw(want_i)).abs()
    assert err.mean() < 0.02 and err.mean(dim=(1, 2, 3)).max() < 0.03, err.mean()
    assert (gm != _nchw(want_m)).float().mean() < 0.01 and _iou(gm, _nchw(want_m)).min() > 0.97


@pytest.mark.opencv4_numerics  # the reference is cv2.warpAffine, whose coordinates OpenCV 5 changed
def test_background_affine_and_composite_match_the_reference(xseg_faces):
    """Step 1 with identity colour and rnd 0: DFL's affine-only warp of the other face (cv2.warpAffine's
    coordinates reproduced, as kernels.warp's transform-only path: 3e-5) and `img·c + bg·(1 - c)`."""
    r = 64
    pairs = _pairs(scan(xseg_faces), r)
    n = 6
    bg_wps = [gen_warp_params(r, True, **xd.BG_RANGES, rnd_state=np.random.RandomState(s),
                              warp_rnd_state=np.random.RandomState(s)) for s in range(n)]
    p = {"bg_on": torch.ones(n, dtype=torch.bool), "bg_hsv_on": torch.zeros(n, dtype=torch.bool),
         "bg_hsv": torch.zeros(n, 3), "bg_levels": torch.tensor([[0.0] * 3, [1.0] * 3, [1.0] * 3, [0.0] * 3, [1.0] * 3]
                                                               ).expand(n, 5, 3), "bg_rnd": torch.zeros(n)}
    imgs, masks = _nchw([pairs[i][0] for i in range(n)]), _nchw([pairs[i][1] for i in range(n)])
    bgs, bgm = _nchw([pairs[(i + 1) % n][0] for i in range(n)]), _nchw([pairs[(i + 1) % n][1] for i in range(n)])
    got = xd._paste_background(imgs, masks, p, bgs, bgm, WarpBatchParams.from_dfl(bg_wps), impl="auto")
    want = []
    for i, wp in enumerate(bg_wps):
        b = warp_by_params(wp, pairs[(i + 1) % n][0], False, True, True, True)
        bm = warp_by_params(wp, pairs[(i + 1) % n][1], False, True, True, False)
        b = np.clip(b * (1 - bm), 0, 1)  # levels (0, 1, 1, 0, 1): the clip only
        c = 1 - (1 - bm) * (1 - pairs[i][1])
        want.append(pairs[i][0] * c + b * (1 - c))
    np.testing.assert_allclose(got.numpy(), _nchw(want).numpy(), atol=1e-4)


def _rates(d: dict, on: str) -> float:
    return float(np.asarray(d[on], dtype=float).mean())


def test_every_draw_follows_the_reference_distribution():
    """draw_xseg (PCG64 per key, fixed layout) against DFL's draws replayed from RandomState: each branch's
    probability and each parameter's range and mean agree within 5 standard errors."""
    r, n = 64, 3000
    ours = xd.draw_xseg(list(range(10**6, 10**6 + n)), r, True)
    ref = [replay(s, r, True)[0] for s in range(n)]
    theirs = {k: np.stack([np.asarray(x[k]) for x in ref]) for k in ref[0]}

    def close(a, b, what):
        a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
        se = np.sqrt(a.var() / len(a) + b.var() / len(b)) + 1e-12
        assert abs(a.mean() - b.mean()) < 5 * se, f"{what}: {a.mean():.4f} vs DFL {b.mean():.4f} (se {se:.4f})"
        slack = 0.02 * (b.max() - b.min()) + 1e-6  # the sample extremes of a continuous law differ a little
        assert b.min() - slack <= a.min() and a.max() <= b.max() + slack, \
            f"{what}: range {a.min()}..{a.max()} vs DFL {b.min()}..{b.max()}"

    for k in ("bg_on", "hsv_on", "detail_on", "blur_on", "resize_on", "resize_linear", "jpeg_on"):
        close(ours[k], theirs[k], k)
    close(ours["flare_on"], theirs["flare_on"], "flare_on")
    # flare sizes (taps that are not zero), JPEG quality, resize size, where drawn
    for i in range(2):
        on_a, on_b = ours["flare_on"][:, i], theirs["flare_on"][:, i]
        close((ours["flare_k"][on_a, i] > 0).sum(1), (theirs["flare_k"][on_b, i] > 0).sum(1), f"flare {i} size")
    close(ours["jpeg_q"][ours["jpeg_on"]], theirs["jpeg_q"][theirs["jpeg_on"]], "jpeg quality")
    close(ours["resize_size"][ours["resize_on"]], theirs["resize_size"][theirs["resize_on"]], "resize size")
    # colour draws (HSV shifts and levels where each is the chosen one), background blend weight
    for pre in ("", "bg_"):
        h_a, h_b = ours[f"{pre}hsv_on"], theirs[f"{pre}hsv_on"]
        if pre:
            h_a, h_b = h_a & ours["bg_on"], h_b & theirs["bg_on"]
        for j, name in enumerate(("dh", "ds", "dv")):
            close(ours[f"{pre}hsv"][h_a, j], theirs[f"{pre}hsv"][h_b, j], f"{pre}{name}")
        l_a, l_b = ~ours[f"{pre}hsv_on"], ~theirs[f"{pre}hsv_on"]
        if pre:
            l_a, l_b = l_a & ours["bg_on"], l_b & theirs["bg_on"]
        for j, name in enumerate(("in_black", "in_white", "gamma", "out_black", "out_white")):
            close(ours[f"{pre}levels"][l_a, j], theirs[f"{pre}levels"][l_b, j], f"{pre}{name}")
    close(ours["bg_rnd"][ours["bg_on"]], theirs["bg_rnd"][theirs["bg_on"]], "bg_rnd")
    # faded circles: the ones each filter uses (colour always; the others where their filter is drawn)
    for j, name in enumerate(xd.CIRCLES):
        sel_a = np.ones(n, bool) if name == "colour" else ours[{"detail": "detail_on", "blur": "blur_on",
                                                                 "resize": "resize_on", "jpeg": "jpeg_on"}[name]]
        sel_b = np.ones(n, bool) if name == "colour" else theirs[{"detail": "detail_on", "blur": "blur_on",
                                                                   "resize": "resize_on", "jpeg": "jpeg_on"}[name]]
        for c, what in enumerate(("start", "end", "row", "col")):
            close(ours["circles"][sel_a, j, c], theirs["circles"][sel_b, j, c], f"circle {name} {what}")
    # the warps: DFL's gen_warp_params law (checked in tests/kernels) with §5.7's ranges, from the uniforms
    wa = warp_params_from_uniforms(torch.from_numpy(ours["warp_u"]), r, True, **xd.MAIN_RANGES)
    ba = warp_params_from_uniforms(torch.from_numpy(ours["bg_u"]), r, True, **xd.BG_RANGES)
    for bp, rng_rot, rng_scale in ((wa, 10, (1 / 1.05, 1.05)), (ba, 180, (1 / 1.10, 1.10))):
        m = bp.rmat.numpy()
        scale, rot = np.hypot(m[:, 0, 0], m[:, 0, 1]), np.degrees(np.arctan2(m[:, 0, 1], m[:, 0, 0]))
        assert rng_scale[0] - 1e-9 <= scale.min() and scale.max() <= rng_scale[1] + 1e-9
        assert -rng_rot - 1e-6 <= rot.min() and rot.max() <= rng_rot + 1e-6 and rot.std() > rng_rot / 3
        assert abs(bp.flip.float().mean().item() - 0.4) < 5 * np.sqrt(0.24 / n)


def test_a_samples_draws_and_output_depend_on_its_key_only(xseg_faces):
    r = 64
    keys = [11, 22, 33, 44]
    full = xd.draw_xseg(keys, r, True)
    alone = xd.draw_xseg([33], r, True)
    for k, v in alone.items():
        np.testing.assert_array_equal(v[0], full[k][2], err_msg=k)
    pairs = _pairs(scan(xseg_faces), r)
    raw = {k: torch.from_numpy(v) for k, v in full.items()}
    aug = xd.XSegAugment(r)

    def run(idx):
        u8 = lambda x: torch.from_numpy(np.clip(np.rint(np.stack(x) * 255), 0, 255).astype(np.uint8))  # noqa: E731
        b = {k: v[idx] for k, v in raw.items()}
        b.update(image=u8([pairs[i][0] for i in idx]), mask=u8([pairs[i][1] for i in idx]),
                 bg_image=u8([pairs[i + 1][0] for i in idx]), bg_mask=u8([pairs[i + 1][1] for i in idx]))
        return aug(b)

    a, b = run([0, 1, 2, 3]), run([2])
    torch.testing.assert_close(a["image"][2:3], b["image"], atol=1e-5, rtol=0)
    assert torch.equal(a["mask"][2:3], b["mask"])


def _loader(faces, workers, **kw):
    return make_xseg_loader(faces, resolution=64, face_type="wf", batch_size=3, seed=5, workers=workers,
                            pipeline="device", **kw)


def test_stream_is_the_same_for_any_worker_count_and_resumes_exactly(xseg_faces):
    faces = scan(xseg_faces)
    a, b = _loader(faces, 0), _loader(faces, 2)
    try:
        first = [next(a) for _ in range(3)]
        second = [next(b) for _ in range(3)]
        for x, y in zip(first, second):
            assert set(x) == {"image", "mask"} and x["image"].shape == (3, 3, 64, 64)
            for k in x:
                assert torch.equal(x[k], y[k]), k
        state = a.state_dict()
        after = next(a)
    finally:
        a.close()
        b.close()
    c = _loader(faces, 0)
    try:
        c.load_state_dict(json.loads(json.dumps(state)))  # plain ints and lists: JSON-able
        again = next(c)
    finally:
        c.close()
    for k in after:
        assert torch.equal(after[k], again[k]), k
    assert c.describe()["pipeline"] == "device"


def test_labels_stay_binary_images_in_range_pretrain_gives_grayscale(xseg_faces):
    faces = scan(xseg_faces)
    loader = _loader(faces, 0)
    try:
        for _ in range(3):
            b = next(loader)
            assert set(b["mask"].unique().tolist()) <= {0.0, 1.0}
            assert 0 <= b["image"].min() and b["image"].max() <= 1
    finally:
        loader.close()
    pre = _loader(faces, 0, pretrain=True)
    try:
        b = next(pre)
    finally:
        pre.close()
    assert set(b) == {"image", "target"} and b["target"].shape == (3, 1, 64, 64)
    gray = 0.114 * b["image"][:, 0] + 0.587 * b["image"][:, 1] + 0.299 * b["image"][:, 2]
    torch.testing.assert_close(b["target"][:, 0], gray, atol=1e-6, rtol=0)


def test_auto_pipeline_choice():
    assert resolve_pipeline("auto", torch.device("cuda"))[0] == "device"
    assert resolve_pipeline("auto", torch.device("cpu"))[0] == CPU_PIPELINE
    assert resolve_pipeline("dfl", torch.device("cuda")) == ("dfl", "requested")
    with pytest.raises(Exception, match=r"\[xseg\].pipeline = 'fast'"):
        resolve_pipeline("fast", torch.device("cpu"))


def _recipe(faces, run, **kw):
    return recipe.loads(xseg_recipe_text([faces], run, **kw), source="xseg_device_test.toml")


def test_resume_is_exact_through_the_device_pipeline(xseg_faces, tmp_path):
    extra = dict(resolution=64, base_ch=2, batch_size=2, extra_xseg='pipeline = "device"')
    train_xseg(_recipe(xseg_faces, tmp_path / "straight", **extra), max_steps=4, progress=False)
    split = _recipe(xseg_faces, tmp_path / "split", **extra)
    train_xseg(split, max_steps=2, progress=False)
    s = train_xseg(split, resume=True, max_steps=2, progress=False)
    a, b = ck.load_model_payload(tmp_path / "straight")["model"], ck.load_model_payload(tmp_path / "split")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert s["data"]["pipeline"] == "device"


def test_learns_through_the_device_pipeline_on_cpu(xseg_faces, tmp_path):
    """DFL's augmentation on, through the device path: the loss falls and the predicted mask overlaps the
    un-augmented labels better than at step 0 (DFL's network at base width 8, 64 px, batch 4)."""
    r = _recipe(xseg_faces, tmp_path / "run", resolution=64, base_ch=8, batch_size=4,
                extra_xseg='pipeline = "device"\nlr = 3e-4')
    t = XSegTrainer.create(r)
    t.make_loader()
    pairs = _pairs(t.faces, 64)
    x = _nchw([p[0] for p in pairs])
    labels = _nchw([p[1] for p in pairs]) > 0.5

    def iou():
        t.net.eval()
        with torch.no_grad():
            pred = t.net(x)[1] >= 0.5
        t.net.train()
        return float(_iou(pred.float(), labels.float()).mean())

    iou0 = iou()
    it = iter(t.loader)
    try:
        losses = [t.train_one(t.next_batch(it))["loss"] for _ in range(60)]
    finally:
        t.loader.close()
    iou1 = iou()
    print(f"device pipeline: loss {np.mean(losses[:5]):.3f} -> {np.mean(losses[-5:]):.3f}, IoU {iou0:.3f} -> {iou1:.3f}")
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5]), losses
    assert iou1 > iou0 + 0.05, (iou0, iou1)


# ---------------------------------------------------------------------------------------------------------
# CUDA


def _raw_batch(faces, r, keys):
    batches = xd.XSegDeviceBatches(faces, resolution=r, face_type="wf")
    plan = type("Plan", (), {"faces": tuple(range(len(keys))), "backgrounds": tuple((i + 1) % len(faces)
                                                                                     for i in range(len(keys))),
                             "keys": tuple(keys), "step": 0})()
    try:
        out = batches[plan]
    finally:
        batches.close()
    return out


@pytest.mark.gpu
@gpu
def test_cuda_matches_cpu_and_never_synchronises(xseg_faces):
    """The same raw batch augmented on CPU and CUDA (Triton warp; cuDNN convolutions may use TF32, torch's
    default) agrees to float tolerance, and the CUDA run makes no host synchronisation (the side stream's
    overlap depends on it)."""
    faces = scan(xseg_faces)
    raw = _raw_batch(faces, 128, list(range(100, 106)))
    aug = xd.XSegAugment(128)
    cpu = aug(unpack(raw["packed"], raw["layout"]))
    moved = unpack(raw["packed"].cuda(), raw["layout"])
    aug(moved)  # warm-up: constants cached per device, kernels compiled
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        gpu_out = aug(moved)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    err = (gpu_out["image"].cpu() - cpu["image"]).abs()
    assert err.mean() < 3e-3 and err.mean(dim=(1, 2, 3)).max() < 0.02, err.mean()
    assert _iou(gpu_out["mask"].cpu(), cpu["mask"]).min() > 0.99


@pytest.mark.gpu
@gpu
def test_cuda_jpeg_equals_cpu(xseg_faces):
    from engine.data.device_jpeg import jpeg_roundtrip

    x = (torch.rand(8, 3, 128, 128, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    q = torch.arange(10, 100, 12)[:8]
    a, b = jpeg_roundtrip(x, q), jpeg_roundtrip(x.cuda(), q.cuda()).cpu()
    d = (a.int() - b.int()).abs()
    assert (d == 0).float().mean() > 0.99 and d.float().mean() < 0.05


@pytest.mark.gpu
@gpu
def test_xseg_trains_on_cuda_with_the_side_stream(xseg_faces, tmp_path):
    r = _recipe(xseg_faces, tmp_path / "run", resolution=64, base_ch=4, batch_size=4,
                extra_train='device = "cuda"')
    s = train_xseg(r, max_steps=4, progress=False)
    assert s["data"]["pipeline"] == "device" and s["data"]["device"].startswith("cuda") and s["step"] == 4
    assert np.isfinite(s["final_losses"]["loss"])
