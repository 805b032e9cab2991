"""XSeg training (engine.xseg.train): it learns (loss falls, IoU with the label beats step 0), one step
matches docs/dfl.md's loss and optimizer computed independently, resume is exact, and the run folder has
checkpoints, previews, TensorBoard and a summary; pretrain mode; fine-tuning from DFL's folder."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import recipe
from engine.faces.facetypes import FaceType
from engine.errors import CheckpointError, TorchSAEError
from engine.train import checkpoint as ck
from engine.xseg.augment import image_and_mask
from engine.xseg.dfl_io import XSEG_OPT_NAME, export_dfl_xseg
from engine.xseg.faces import scan
from engine.xseg.train import XSegTrainer, train_xseg

from xseg_helpers import label_faces, make_faceset, xseg_recipe_text

ROOT = Path(__file__).resolve().parents[2]


def _recipe(facesets, run_dir, **kw):
    return recipe.loads(xseg_recipe_text(facesets, run_dir, **kw), source="xseg_test.toml")


def _iou_on(t: XSegTrainer, x: torch.Tensor, labels: np.ndarray) -> float:
    t.net.eval()
    with torch.no_grad():
        pred = t.net(x)[1][:, 0].numpy() >= 0.5
    t.net.train()
    inter, union = (pred & labels).sum((1, 2)), (pred | labels).sum((1, 2))
    return float((inter / np.maximum(union, 1)).mean())


def _learning_run(facesets, run_dir, steps, **kw):
    r = _recipe(facesets, run_dir, **kw)
    t = XSegTrainer.create(r)
    t.make_loader()
    ft = FaceType.parse(r.xseg.face_type)
    pairs = [image_and_mask(f.sample, f.polys, r.xseg.resolution, ft) for f in t.faces]
    x = torch.from_numpy(np.stack([p[0] for p in pairs]).transpose(0, 3, 1, 2).copy())
    labels = np.stack([p[1][..., 0] for p in pairs]) > 0.5
    iou0 = _iou_on(t, x, labels)
    it = iter(t.loader)
    losses = [t.train_one({k: v for k, v in next(it).items() if torch.is_tensor(v)})["loss"] for _ in range(steps)]
    t.loader.close()
    return losses, iou0, _iou_on(t, x, labels)


def test_xseg_learns_the_labels_loss_falls_and_iou_beats_step_0(xseg_faces, tmp_path):
    # Smallest faithful configuration: DFL's network (base width 8 instead of 32), loss, RMSprop lr 1e-4 with
    # lr_dropout 0.3, batch 4, at 64 px, on the labelled faces as they are (augmentation is checked on its own
    # in test_xseg_augment and in the slow demo-faces run).
    losses, iou0, iou1 = _learning_run([xseg_faces], tmp_path / "run", 50, resolution=64, base_ch=8, batch_size=4,
                                       extra_xseg="augment = false")
    print(f"synthetic faces: loss {np.mean(losses[:5]):.3f} -> {np.mean(losses[-5:]):.3f}, IoU {iou0:.3f} -> {iou1:.3f}")
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), losses
    assert iou1 > iou0 + 0.03, (iou0, iou1)


@pytest.mark.slow
def test_xseg_learns_on_demo_faces_with_dfl_augmentation(tmp_path):
    """Real faces: a subset of workspace/demo (when present), polygons from the landmark hulls, DFL's full
    augmentation, 128 px, base width 16."""
    src = ROOT / "workspace" / "demo" / "data_src" / "aligned"
    files = sorted(src.glob("*.jpg"))[:24] if src.is_dir() else []
    if len(files) < 8:
        pytest.skip("demo faces not present (make data)")


    d = tmp_path / "demo"
    d.mkdir()
    for f in files:
        shutil.copy(f, d / f.name)
    label_faces(sorted(d.glob("*.jpg")))
    losses, iou0, iou1 = _learning_run([d], tmp_path / "run", 300, resolution=128, base_ch=16, batch_size=4)
    print(f"demo faces: loss {np.mean(losses[:20]):.3f} -> {np.mean(losses[-20:]):.3f}, IoU {iou0:.3f} -> {iou1:.3f}")
    assert np.mean(losses[-20:]) < 0.8 * np.mean(losses[:20]), (losses[:20], losses[-20:])
    assert iou1 > iou0 + 0.1, (iou0, iou1)


def test_one_step_matches_spec_loss_and_rmsprop_computed_independently(xseg_faces, tmp_path):
    """docs/dfl.md §7.2: loss_n = mean sigmoid-CE(logits_n, mask_n); gradient of Σ_n loss_n (DFL differentiates the
    loss vector, §12.1); RMSprop a = 0.9a + 0.1g², w -= 1e-4·g/(√a + 1e-6) (§3.6), lr_dropout 0.3 as a
    Bernoulli mask on the update. Expected values in float64 from the formulas; the trainer runs float32.
    Tolerances: loss rtol 1e-5; gradients atol 1e-4·max|g| + rtol 1e-3; update Δ within 1e-3·|Δ| + 1e-9 where
    |g| > 1e-4 (over 75 % of the elements; below, float32 rounding of g against ε = 1e-6 moves Δ's size,
    which is bounded by lr·√10 anyway). lr_dropout: the kept fraction of elements with a gradient is
    0.3 ± 0.02 (± 10σ over ~65k elements)."""
    r = _recipe([xseg_faces], tmp_path / "run", resolution=64, base_ch=2, batch_size=3,
                extra_xseg="augment = false\nlr_dropout = 1.0")
    t = XSegTrainer.create(r)
    t.make_loader()
    batch = {k: v for k, v in next(iter(t.loader)).items() if torch.is_tensor(v)}
    t.loader.close()
    ref = {k: p.detach().double().clone() for k, p in t.net.named_parameters()}

    net64 = XSegTrainer.create(r, faces=(t.faces, [])).net.double()
    net64.load_state_dict({k: v for k, v in ref.items()})
    logits, _ = net64(batch["image"].double())
    z = batch["mask"].double()
    per = (logits.clamp(min=0) - logits * z + torch.log1p(torch.exp(-logits.abs()))).mean(dim=(1, 2, 3))
    grads = torch.autograd.grad(per.sum(), list(net64.parameters()))
    want_g = {k: g.detach() for (k, _), g in zip(net64.named_parameters(), grads)}

    loss = t.train_one(batch)["loss"]
    assert loss == pytest.approx(float(per.detach().mean()), rel=1e-5)
    gmax = max(float(g.abs().max()) for g in want_g.values())
    n_checked = 0
    for k, p in t.net.named_parameters():
        g = p.grad.double()
        np.testing.assert_allclose(g.numpy(), want_g[k].numpy(), rtol=1e-3, atol=1e-4 * gmax, err_msg=k)
        a = 0.1 * want_g[k] ** 2
        delta_want = 1e-4 * want_g[k] / (a.sqrt() + 1e-6)
        delta_got = ref[k] - p.detach().double()
        big = want_g[k].abs() > 1e-4
        np.testing.assert_allclose(delta_got[big].numpy(), delta_want[big].numpy(), rtol=1e-3, atol=1e-9, err_msg=k)
        assert float(delta_got.abs().max()) <= 2 * 1e-4 * 10 ** 0.5
        n_checked += int(big.sum())
    assert n_checked > 0.75 * sum(p.numel() for p in t.net.parameters())

    # lr_dropout 0.3: each element's update is either the full RMSprop step or nothing, ~30 % kept
    r2 = attrs_evolve_xseg(r, lr_dropout=0.3)
    t2 = XSegTrainer.create(r2, faces=(t.faces, []))
    t2.net.load_state_dict({k: v.float() for k, v in ref.items()})
    t2.train_one(batch)
    kept = total = 0
    for k, p in t2.net.named_parameters():
        d = (ref[k] - p.detach().double()).numpy()
        full = (1e-4 * want_g[k] / ((0.1 * want_g[k] ** 2).sqrt() + 1e-6)).numpy()
        on = d != 0
        big = (want_g[k].abs() > 1e-4).numpy()
        np.testing.assert_allclose(d[on & big], full[on & big], rtol=1e-3, atol=1e-9)
        kept += int(on.sum())
        total += int((want_g[k] != 0).sum())  # a zero gradient (TLU floors, dead regions) moves nothing
    assert 0.28 < kept / total < 0.32, kept / total


def attrs_evolve_xseg(r, **changes):
    import attrs

    return attrs.evolve(r, xseg=attrs.evolve(r.xseg, **changes))


def test_resume_is_exact_and_the_run_folder_is_complete(xseg_faces, tmp_path):
    def weights(run):
        return ck.load_model_payload(run)["model"]

    extra = dict(resolution=64, base_ch=2, batch_size=2, extra_train="preview_every = 2\nlog_every = 1")
    straight = _recipe([xseg_faces], tmp_path / "straight", **extra)
    s = train_xseg(straight, max_steps=4, progress=False)
    split = _recipe([xseg_faces], tmp_path / "split", **extra)
    train_xseg(split, max_steps=2, progress=False)
    train_xseg(split, resume=True, max_steps=2, progress=False)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "split")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa = ck.load_train_state(ck.resolve_latest(tmp_path / "straight"))
    sb = ck.load_train_state(ck.resolve_latest(tmp_path / "split"))
    assert torch.equal(sa["history"], sb["history"]) and sa["step"] == sb["step"] == 4
    assert sa["loader"] == sb["loader"]

    run = tmp_path / "straight"
    previews = sorted((run / "logs" / "previews").glob("step_*.png"))
    assert [p.name for p in previews] == ["step_000002.png", "step_000004.png"]
    import cv2

    img = cv2.imread(str(previews[-1]))
    assert img.shape[1] == 4 * 64  # image | label_overlay | prediction | prediction_overlay
    assert list((run / "logs").glob("events.out.tfevents.*"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary == json.loads(json.dumps(s)) and summary["kind"] == "xseg" and summary["training_faces"] == 6
    # the SAEHD loop's reporting: loop time and loader wait next to the step's own time, the pipeline used
    assert {"loop_s_per_step", "loader_wait_pct", "median_s_per_step"} <= set(summary) and "pipeline" in summary["data"]
    stored = recipe.loads(ck.load_model_payload(run)["recipe_toml"])
    assert stored.kind == "xseg" and stored.xseg == straight.xseg
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        train_xseg(straight, max_steps=1, progress=False)
    other = _recipe([xseg_faces], tmp_path / "straight", resolution=64, base_ch=4)
    with pytest.raises(CheckpointError, match="xseg.base_ch: checkpoint 2 != recipe 4"):
        train_xseg(other, resume=True, max_steps=1, progress=False)


def test_unlabelled_faces_are_skipped_with_a_count(tmp_path, caplog):
    make_faceset(tmp_path / "src", 4, seed=3, every=2)
    make_faceset(tmp_path / "dst", 3, seed=4, every=0)
    r = _recipe([tmp_path / "src", tmp_path / "dst"], tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="torchsae.xseg"):
        t = XSegTrainer.create(r)
    assert len(t.faces) == 2 and len(t.unlabelled) == 4  # 2 unlabelled per faceset for the preview
    text = caplog.text
    assert "src: 2 of 4 faces labelled (polygons)" in text and "dst: 0 of 3 faces labelled" in text
    assert "training on 2 labelled faces; 5 faces without labels skipped" in text


def test_pretrain_mode_zeroes_skips_and_switching_it_off_restarts_the_counter(xseg_faces, tmp_path):
    pre = _recipe([], tmp_path / "run", resolution=64, base_ch=2,
                  extra_xseg=f'pretrain = true\npretrain_faceset = "{xseg_faces}"')
    t = XSegTrainer.create(pre)
    t.make_loader()
    batch = {k: v for k, v in next(iter(t.loader)).items() if torch.is_tensor(v)}
    assert set(batch) == {"image", "target"} and batch["target"].shape == (2, 1, 64, 64)
    gray = 0.114 * batch["image"][:, 0] + 0.587 * batch["image"][:, 1] + 0.299 * batch["image"][:, 2]  # BGR
    np.testing.assert_allclose(batch["target"][:, 0].numpy(), gray.numpy(), atol=2e-3)
    t.loader.close()
    train_xseg(pre, max_steps=2, progress=False)
    normal = _recipe([xseg_faces], tmp_path / "run", resolution=64, base_ch=2)
    s = train_xseg(normal, resume=True, max_steps=1, progress=False)
    assert s["step"] == 1 and not s["pretrain"]  # DFL's pretrain_just_disabled: iter back to 0


def test_fine_tune_from_a_dfl_xseg_folder(xseg_faces, tmp_path):
    r = _recipe([xseg_faces], tmp_path / "a", resolution=256, base_ch=1, batch_size=1, extra_xseg="augment = false")
    train_xseg(r, max_steps=1, progress=False)
    info = export_dfl_xseg(tmp_path / "a", tmp_path / "dfl")
    assert (tmp_path / "dfl" / XSEG_OPT_NAME).is_file() and info["iter"] == 1
    ft = _recipe([xseg_faces], tmp_path / "b", resolution=256, base_ch=1, batch_size=1,
                 extra_xseg=f'augment = false\ninit_from = "{tmp_path / "dfl"}"')
    t = XSegTrainer.create(ft)
    t.init_from(ft.xseg.init_from)
    src = ck.load_model_payload(tmp_path / "a")["model"]
    for k, v in t.net.state_dict().items():
        assert torch.equal(v, src[k]), k
    assert t.opt.iterations == 1 and t.step == 0
    wrong = _recipe([xseg_faces], tmp_path / "c", resolution=256, base_ch=2,
                    extra_xseg=f'init_from = "{tmp_path / "dfl"}"')
    with pytest.raises(CheckpointError, match="base_ch 1 / resolution 256 XSeg, the recipe builds base_ch 2"):
        XSegTrainer.create(wrong).init_from(wrong.xseg.init_from)


def test_recipes_of_the_wrong_kind_are_refused(xseg_faces, tmp_path):
    saehd = recipe.load(ROOT / "recipes" / "tests" / "tiny_df.toml")
    with pytest.raises(TorchSAEError, match="a SAEHD recipe; `torchsae xseg train` needs an XSeg recipe"):
        XSegTrainer.create(saehd)
    from engine.__main__ import main

    p = tmp_path / "x.toml"
    p.write_text(xseg_recipe_text([xseg_faces], tmp_path / "run"))
    assert main(["train", str(p)]) == 2


def test_non_finite_steps_are_skipped_then_stop_the_run(xseg_faces, tmp_path):
    r = _recipe([xseg_faces], tmp_path / "run", extra_xseg="augment = false", extra_train="max_bad_steps = 2")
    t = XSegTrainer.create(r)
    t.make_loader()
    batch = {k: v for k, v in next(iter(t.loader)).items() if torch.is_tensor(v)}
    t.loader.close()
    before = {k: v.clone() for k, v in t.net.state_dict().items()}
    bad = dict(batch, image=torch.full_like(batch["image"], float("nan")))
    t.train_one(bad)
    assert t.step == 0 and t.skipped == 1
    assert all(torch.equal(v, before[k]) for k, v in t.net.state_dict().items())
    with pytest.raises(TorchSAEError, match="2 non-finite steps in a row at step 0"):
        t.train_one(bad)
    t.bad_steps = 0
    t.train_one(batch)
    assert t.step == 1 and np.isfinite(t.last_losses["grad_norm"])
