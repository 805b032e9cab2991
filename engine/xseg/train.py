"""XSeg training (DFL `models/Model_XSeg`, docs/dfl.md §7.2): labelled faces -> XSeg weights, with TorchSAE's loop.

    summary = train_xseg(recipe)                 # kind = "xseg": [xseg] + [train]
    summary = train_xseg(recipe, resume=True)    # latest checkpoint of the run folder

The step, exactly as DFL:
- normal mode: ``loss_n = mean_{H,W,C} sigmoid_cross_entropy_with_logits(labels=mask_n, logits=logits_n)`` per
  sample (TF's form ``max(x, 0) - x·z + log(1 + exp(-|x|))``);
- pretrain mode (skips zeroed, network output after the sigmoid vs the grayscale target):
  ``loss_n = 5·dssim(target, pred, int(R/11.6)) + 5·dssim(target, pred, int(R/23.2)) + 10·mean((target - pred)²)``;
- gradients of the batch **sum** of the per-sample losses (DFL differentiates the loss vector, quirk
  §12.1); the logged loss is the batch mean;
- DFL's RMSprop (engine.optim.RMSprop: ρ 0.9, ε 1e-6 outside the root) with lr 1e-4 and lr_dropout 0.3,
  no lr_cos, no clipnorm; all 222 tensors (FRN's eps included) are trained.
Switching a run from pretrain to normal training restarts the step counter at 0 (DFL's
pretrain_just_disabled); the pretrain phase's checkpoints keep their own names (`pretrain_step_*`), as SAEHD's.

The loop is SAEHD's: `XSegTrainer` satisfies engine.train.loop's `LoopTrainer` protocol (on
engine.train.base.TrainerBase) and `train_xseg` runs it with `engine.train.loop.run_trainer`, so XSeg
training has the same saves (after step 1, every N steps / minutes, at the target, on Ctrl-C; keep-last,
DFL backups), progress bar, TensorBoard (loss, grad norm, lr, it/s, loader wait), previews (keep_previews),
`summary.json` and crash recovery. The non-finite guard skips the update; `max_bad_steps` in a row stop the
run with an error naming the last checkpoint (XSeg has no rollback). Resume restores the network, optimizer
(moments, counter, lr-dropout RNG), step, loss history, RNG states, loader position and preview faces, so
on CPU N steps + resume + N steps equals 2N steps.

Several GPUs (torchrun, as SAEHD: engine.train.distributed): `[train].batch_size` is the global batch; each
rank trains on its slice of the same planned batch (the sample stream does not depend on the rank count),
gradients and the logged loss are summed over ranks, so W ranks apply exactly the single-process update at
the combined batch; only global rank 0 writes.

Previews (`logs/previews/step_XXXXXX.png`, also in TensorBoard): rows of fixed faces; columns image |
label overlay | prediction | prediction overlay (DFL's green tint outside the mask at 0.5). The first rows
are training samples (augmented, labelled); then up to two unlabelled faces of each faceset, as DFL's "src
faces" / "dst faces" previews show how the model does where nobody labelled.

Deviation: DFL's data loader and its lr-dropout masks are unseeded; here both come from `[train].seed`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np
import torch
import torch.nn.functional as F

from engine import recipe as recipe_mod
from engine.errors import CheckpointError, TorchSAEError
from engine.faces.facetypes import FaceType
from engine.optim import RMSprop, global_grad_norm
from engine.recipe.specs import Recipe
from engine.train import checkpoint as ck
from engine.train.base import TrainerBase
from engine.train import distributed as ddp
from engine.train.device import place, process_settings
from engine.train.loop import run_trainer
from engine.train.preview import compose, mask_overlay
from engine.train.rng import seed_everything
from engine.xseg.augment import face_image
from engine.xseg.data import make_xseg_loader
from engine.xseg.dfl_io import load_dfl_optimizer
from engine.xseg.faces import XSegFace, labelled_faces, scan
from engine.xseg.model import build_xseg, load_xseg, xseg_recipe_of
from kernels.dssim import dssim

__all__ = ["xseg_loss", "XSegTrainer", "train_xseg", "load_training_faces", "PREVIEW_UNLABELLED"]

log = logging.getLogger("torchsae.xseg")

PREVIEW_UNLABELLED = 2  # unlabelled faces per faceset in the preview


def xseg_loss(logits: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, *, pretrain: bool,
              resolution: int) -> torch.Tensor:
    """Per-sample XSeg loss (N,) (module doc). logits/pred (N, 1, R, R); target: the label mask (normal) or
    the grayscale image (pretrain), (N, 1, R, R)."""
    if not pretrain:
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(1, 2, 3))
    w1, w2 = int(resolution / 11.6), int(resolution / 23.2)
    pred, target = pred.float(), target.float()
    return (5.0 * dssim(target, pred, w1).mean(dim=1) + 5.0 * dssim(target, pred, w2).mean(dim=1)
            + 10.0 * torch.mean((target - pred) ** 2, dim=(1, 2, 3)))


def load_training_faces(r: Recipe) -> tuple[list[XSegFace], list[XSegFace], str]:
    """(training faces, unlabelled faces for the preview, what labels them) of an XSeg recipe; logs counts."""
    x = r.xseg
    if x.pretrain:
        faces = scan(x.pretrain_faceset)
        log.info("XSeg pretrain: %d faces from %s", len(faces), x.pretrain_faceset)
        return faces, [], "pretrain"
    per_set = [(path, scan(path)) for path in x.facesets]
    every = [f for _, fs in per_set for f in fs]
    train, skipped, source = labelled_faces(every, where=", ".join(x.facesets))
    chosen = {id(f) for f in train}
    unlabelled = []
    for path, fs in per_set:
        n = sum(id(f) in chosen for f in fs)
        log.info("XSeg: %s: %d of %d faces labelled (%s)", path, n, len(fs), source)
        unlabelled += [f for f in fs if id(f) not in chosen][:PREVIEW_UNLABELLED]
    log.info("XSeg: training on %d labelled faces; %d faces without labels skipped", len(train), skipped)
    return train, unlabelled, source


def check_resumable(stored_toml: str, r: Recipe, source: str) -> Recipe:
    """The checkpoint's XSeg recipe; CheckpointError naming every key that makes it a different network."""
    stored = xseg_recipe_of(stored_toml, source)
    diffs = [f"xseg.{k}: checkpoint {getattr(stored.xseg, k)!r} != recipe {getattr(r.xseg, k)!r}"
             for k in ("base_ch", "resolution", "face_type") if getattr(stored.xseg, k) != getattr(r.xseg, k)]
    if diffs:
        raise CheckpointError(f"{source} was written by an incompatible XSeg recipe:\n  " + "\n  ".join(diffs)
                              + "\n(start a new run folder, or use the recipe the checkpoint was trained with)")
    return stored


@attrs.define(kw_only=True)
class XSegTrainer(TrainerBase):
    """All live objects of an XSeg run; `create` builds them, engine.train.loop.run trains them. `model` (also
    `net`) is the XSeg network."""

    history_keys: ClassVar[tuple[str, ...]] = ("loss",)
    progress_label: ClassVar[str | None] = "XSeg"

    opt: RMSprop
    faces: list
    unlabelled: list

    @property
    def net(self) -> torch.nn.Module:
        return self.model

    @classmethod
    def create(cls, r: Recipe, *, run_dir: str | Path | None = None, device: str | None = None,
               faces: tuple[list, list] | None = None) -> XSegTrainer:
        if r.kind != "xseg":
            raise TorchSAEError(f"{r.source or r.name}: a {r.kind.upper()} recipe; `torchsae xseg train` needs an XSeg "
                                "recipe (kind = \"xseg\" with an [xseg] table, e.g. recipes/xseg.toml)")
        dev, dist = place(r.train, device)  # under torchrun: this rank's device and the process group
        seed_everything(r.train.seed)
        train_faces, unlabelled = faces if faces is not None else load_training_faces(r)[:2]
        net = build_xseg(r).to(dev)
        ddp.broadcast_module(net, dist)
        opt = RMSprop(net.parameters(), lr=r.xseg.lr, lr_dropout=r.xseg.lr_dropout, seed=r.train.seed * 1000 + 31)
        run = Path(run_dir) if run_dir else ck.run_dir_of(r)
        return cls(recipe=r, recipe_toml=recipe_mod.dumps(r), run_dir=run, device=dev, model=net, opt=opt,
                   faces=train_faces, unlabelled=unlabelled, pretrain=r.xseg.pretrain, dist=dist)

    def make_loader(self) -> None:
        x = self.recipe.xseg
        self.loader = make_xseg_loader(self.faces, resolution=x.resolution, face_type=x.face_type,
                                       batch_size=self.recipe.train.batch_size, seed=self.recipe.train.seed,
                                       workers=x.workers, augment=x.augment, pretrain=x.pretrain,
                                       pipeline=x.pipeline, device=self.device, rank=self.dist.rank,
                                       world_size=self.dist.world)

    # ------------------------------------------------------------------ weights from elsewhere
    def init_from(self, path: str | Path) -> None:
        """Start from DFL's XSeg weights (folder / XSeg_256.npy, with DFL's RMSprop state from
        XSeg_256_opt.npy when it is there) or another TorchSAE XSeg checkpoint's weights; the step stays 0."""
        net, ft, _step, _ = load_xseg(path)
        want = FaceType.parse(self.recipe.xseg.face_type, "[xseg].face_type")
        if (net.base_ch, net.resolution) != (self.net.base_ch, self.net.resolution):
            raise CheckpointError(f"[xseg].init_from = {str(path)!r}: a base_ch {net.base_ch} / resolution "
                                  f"{net.resolution} XSeg, the recipe builds base_ch {self.net.base_ch} / resolution "
                                  f"{self.net.resolution}")
        if ft is not None and ft != want:
            log.warning("XSeg: %s was trained for face type %s; this recipe trains %s (the weights still load)",
                        path, ft.long_name, want.long_name)
        self.net.load_state_dict(net.state_dict())
        if load_dfl_optimizer(self.opt, self.net, path):
            log.info("XSeg: DFL's optimizer state (RMSprop moments, %d iterations) loaded from %s",
                     self.opt.iterations, path)
        log.info("XSeg: weights initialised from %s", path)

    # ------------------------------------------------------------------ checkpoints (TrainerBase's hooks)
    def _train_state(self) -> dict[str, Any]:
        return {"opt": self.opt.state_dict()}

    def _check_checkpoint(self, recipe_toml: str, path: Path) -> None:
        check_resumable(recipe_toml, self.recipe, str(path))

    def _load_state(self, state: dict[str, Any], path: Path) -> None:
        self.opt.load_state_dict(state["opt"])

    def _restore_phase(self, state: dict[str, Any]) -> bool:
        if bool(state.get("pretrain", False)) and not self.pretrain:
            # DFL's pretrain_just_disabled: the counter restarts, the weights carry over, and the pretrain
            # faceset's sample stream does not apply to the labelled faces (the loader starts afresh)
            log.info("XSeg: pretraining finished at step %d; the step counter restarts at 0", self.step)
            self.step, self.history, self.preview_batch = 0, [], None
            return False
        return True

    def _load_weights_only(self, payload: dict[str, Any], path: Path) -> None:
        raise CheckpointError(f"{path}: an inference-only XSeg checkpoint (no train_state.pt); start from it with "
                              f"[xseg].init_from = '{path}' instead of resuming")

    # ------------------------------------------------------------------ the step
    def train_one(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One step on `batch`: {"loss": batch mean, "grad_norm"}; counted only when both are finite."""
        t0 = time.perf_counter()
        target = batch["target" if self.pretrain else "mask"]
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        logits, pred = self.net(batch["image"], pretrain=self.pretrain)
        per_sample = xseg_loss(logits, pred, target, pretrain=self.pretrain, resolution=self.recipe.xseg.resolution)
        per_sample.sum().backward()  # DFL: gradients of the per-sample loss vector = of its sum
        loss_sum = per_sample.detach().sum()
        if self.dist.enabled:  # the combined batch's gradient and loss on every rank (so all agree to skip)
            ddp.allreduce_grads_(list(self.net.parameters()), self.dist)
            loss_sum = ddp.allreduce_sum(loss_sum, self.dist)
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        # one host sync for both numbers (the non-finite guard)
        losses = {"loss": float(loss_sum / self.recipe.train.batch_size), "grad_norm": float(global_grad_norm(grads))}
        if self.finite_or_skip(losses):
            self.opt.step()
            self.count_step(losses, t0)
        return losses

    def diverged(self) -> None:
        last = ck.resolve_latest(self.run_dir, required=False)
        raise TorchSAEError(f"XSeg training diverged: {self.bad_steps} non-finite steps in a row at step "
                            f"{self.step}; resume from {last or 'a new run'} with a lower [xseg].lr")

    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def summary_fields(self) -> dict[str, Any]:
        return {"training_faces": len(self.faces), "pretrain": self.pretrain}

    # ------------------------------------------------------------------ previews
    def preview_every(self) -> int:
        return self.recipe.train.preview_every or 100

    def _unlabelled_images(self) -> torch.Tensor | None:
        x = self.recipe.xseg
        ft = FaceType.parse(x.face_type, "[xseg].face_type")
        imgs = []
        for f in self.unlabelled:
            try:
                imgs.append(np.clip(face_image(f.sample, x.resolution, ft), 0, 1))
            except Exception as e:  # noqa: BLE001 - a preview face that no longer decodes is left out
                log.debug("preview: %s skipped (%s)", f.name, e)
        if not imgs:
            return None
        return torch.from_numpy(np.stack(imgs).transpose(0, 3, 1, 2).copy())

    def preview_samples(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The fixed preview rows: up to 4 samples of the first batch with their labels, then the unlabelled faces."""
        n = min(4, batch["image"].shape[0], max(1, 800 // self.recipe.xseg.resolution))
        key = "target" if self.pretrain else "mask"
        out = {"image": batch["image"][:n].detach().clone(), "label": batch[key][:n].detach().clone()}
        extra = self._unlabelled_images()
        if extra is not None and not self.pretrain:
            out["unlabelled"] = extra.to(self.device)
        return out

    def preview_image(self) -> np.ndarray | None:
        """image | label overlay | prediction | prediction overlay (pretrain: image | target | prediction)."""
        if self.preview_batch is None:
            return None
        b = self.preview_batch
        imgs = [b["image"]] + ([b["unlabelled"]] if "unlabelled" in b else [])
        x = torch.cat(imgs).to(self.device)
        self.net.eval()
        with torch.no_grad():
            _, pred = self.net(x, pretrain=self.pretrain)
        self.net.train()
        nhwc = lambda t: t.detach().float().cpu().permute(0, 2, 3, 1).numpy()  # noqa: E731
        img, p = nhwc(x), nhwc(pred)
        n_lab = b["image"].shape[0]
        lab = nhwc(b["label"])
        if self.pretrain:  # label and prediction are grayscale faces
            cols = {"image": img, "target": np.repeat(lab, 3, -1), "prediction": np.repeat(p, 3, -1)}
        else:
            label_col = np.concatenate([np.stack([mask_overlay(i, m) for i, m in zip(img[:n_lab], lab)]),
                                        0.25 + 0.25 * img[n_lab:]])  # unlabelled rows: the face, dimmed
            cols = {"image": img, "label_overlay": label_col, "prediction": np.repeat(p, 3, -1),
                    "prediction_overlay": np.stack([mask_overlay(i, m) for i, m in zip(img, p)])}
        return compose(cols, step=self.step, history=np.asarray(self.history[-100000:], dtype=np.float32).reshape(-1, 1),
                       loss_names=("loss",))


def train_xseg(r: Recipe, *, resume: bool | str | None = None, run_dir: str | Path | None = None,
               device: str | None = None, max_steps: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Train an XSeg recipe. resume: None/False = new run (refuses a run folder with checkpoints; starts from
    [xseg].init_from when set); True = the run folder's latest checkpoint; a path = that checkpoint."""
    # [train].threads, flush-to-zero (RMSprop's second moments go denormal; TF, so DFL, flushes them too) and
    # [train].deterministic for the run, restored afterwards
    with process_settings(r.train):
        t = XSegTrainer.create(r, run_dir=run_dir, device=device)
        fresh = (lambda: t.init_from(r.xseg.init_from)) if r.xseg.init_from else None
        return run_trainer(t, resume=resume, max_steps=max_steps, progress=progress, on_new_run=fresh)
