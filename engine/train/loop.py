"""The training loop: recipe -> model, optimizers, loader -> SAEHD steps, with checkpoints, previews,
TensorBoard, schedules, a NaN/inf guard, DDP and exact resume.

    summary = train(recipe, resume=True)      # resume=True: latest checkpoint of the run folder

What a step is (losses, optimizers, D steps in DFL's order) lives in engine/train/step.py; this module is
the outer loop of DFL's Trainer/ModelBase (spec §11) done the TorchSAE way:
- saves are atomic units (engine/train/checkpoint.py) after the first step, every N steps and/or every N
  minutes (DFL: 25), at the target step, on Ctrl-C and at the end; keep-last-N; DFL-style backups;
- everything that decides the next step is checkpointed (model, optimizers incl. their lr-dropout RNG,
  scaler, step, RNG states, loader position, fixed preview samples, loss history, lr back-off), so on CPU
  N steps + resume + N steps equals 2N steps bit for bit;
- a non-finite loss or gradient skips the update; `max_bad_steps` in a row roll back to the last good
  checkpoint and multiply the lr by `lr_backoff`;
- `summary.json` in the run folder at the end (steps, median s/step after warm-up, final losses, checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from engine import recipe as recipe_mod
from engine import schedules
from engine.errors import CheckpointError, TorchSAEError
from engine.fileio import write_atomic
from engine.recipe.specs import Recipe
from engine.train import checkpoint as ck
from engine.train import distributed as ddp

log = logging.getLogger("torchsae.train")

WARMUP_STEPS = 3  # steps excluded from the median step time (compilation, allocator warm-up)


# ---------------------------------------------------------------------------------------------------------
# RNG state (weights-only friendly)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = s["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


# ---------------------------------------------------------------------------------------------------------
# building blocks from the recipe


def pick_device(spec: str) -> torch.device:
    if spec == "cuda" and not torch.cuda.is_available():
        raise TorchSAEError("[train].device = 'cuda' but no CUDA device is available (valid here: cpu, auto)")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def loss_config(r: Recipe, *, pretrain: bool, loss=None):
    from engine.losses.saehd import LossConfig

    l = loss or r.loss
    return LossConfig(resolution=r.model.resolution, masked_training=l.masked_training,
                      eyes_mouth_prio=l.eyes_mouth_prio, blur_out_mask=l.blur_out_mask, pretrain=pretrain,
                      face_style_power=l.face_style_power, bg_style_power=l.bg_style_power,
                      true_face_power=l.true_face_power, gan_power=l.gan_power, dssim_weight=l.dssim_weight,
                      mse_weight=l.mse_weight, eyes_mouth_weight=l.eyes_mouth_weight, mask_weight=l.mask_weight,
                      kernels=r.compile.kernels)


def optim_config(r: Recipe, *, pretrain: bool, seed: int):
    from engine.optim import OptimConfig

    o = r.optim
    if o.name in ("adabelief", "rmsprop"):
        return attrs.evolve(OptimConfig.from_dfl_options(adabelief=o.name == "adabelief", lr_dropout=o.lr_dropout,
                                                         clipgrad=o.clipgrad, pretrain=pretrain, lr=o.lr, seed=seed),
                            kernels=r.compile.kernels)
    return OptimConfig(name=o.name, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay,
                       clipnorm=1.0 if o.clipgrad else 0.0, seed=seed)


def _max_over_ramps(r: Recipe, term: str) -> float:
    vals = [getattr(r.loss, term)] + [max(x.start_value, x.end_value) for x in r.schedule.ramp if x.term == term]
    return max(vals)


def archi_type(r: Recipe) -> str:
    return r.model.archi_type if r.model.graph is None else "graph"


def freeze_parts(model: torch.nn.Module, parts, trainable: dict) -> dict:
    """Drop the named parts ([train].freeze) from the trainable set; unknown names are an error."""
    known = dict(model.parts())
    bad = [p for p in parts if p not in known]
    if bad:
        from engine.errors import RecipeError, did_you_mean

        raise RecipeError(None, "train.freeze", f"no model part named '{bad[0]}'{did_you_mean(bad[0], known)}",
                          "valid: " + ", ".join(known))
    return {n: p for n, p in trainable.items() if n.split(".", 1)[0] not in parts}


def init_parts(model: torch.nn.Module, spec: dict[str, str]) -> None:
    """Start parts from other checkpoints ([train].init_parts = {part = "ckpt"} or {part = "ckpt::other"}):
    how a trained identity's decoder is reused in a new model."""
    parts = dict(model.parts())
    for part, ref in spec.items():
        path, _, src_part = ref.partition("::")
        src_part = src_part or part
        if part not in parts:
            raise CheckpointError(f"[train].init_parts: the model has no part '{part}' (parts: {', '.join(parts)})")
        sd = ck.load_model_payload(path)["model"]
        prefix = src_part + "."
        sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if not sub:
            raise CheckpointError(f"[train].init_parts.{part}: {path} has no part '{src_part}'")
        try:
            parts[part].load_state_dict(sub)
        except RuntimeError as e:
            raise CheckpointError(f"[train].init_parts.{part}: {path}::{src_part} does not fit: "
                                  f"{str(e).splitlines()[0]}") from None
        log.info("part %s initialised from %s::%s", part, path, src_part)


def extra_losses(r: Recipe, model: torch.nn.Module, device: torch.device):
    """The step's TorchSAE terms: per-identity reconstruction for identities beyond src/dst, and latent
    distillation towards a frozen teacher. None when the recipe uses neither."""
    hooks = []
    idents = tuple(r.data.identities)
    if idents:
        from engine.losses.saehd import identity_recon_losses

        def recon(outputs, batch):
            cfg = loss_config(r, pretrain=False)
            terms = identity_recon_losses(model, batch, idents, cfg)
            return {f"{x}_loss": terms[f"{x}_loss"] for x in idents}

        hooks.append(recon)
    if r.loss.latent_distill_weight > 0:
        from engine.graph import build
        from engine.losses import latent_distill_hook

        payload = ck.load_model_payload(r.loss.latent_distill_teacher)
        teacher = build(recipe_mod.loads(payload["recipe_toml"])).to(device)
        teacher.load_state_dict(payload["model"])
        hooks.append(latent_distill_hook(teacher, r.loss.latent_distill_weight, r.loss.latent_distill_mode))
    if not hooks:
        return None

    def combined(outputs, batch):
        out = {}
        for h in hooks:
            out.update(h(outputs, batch))
        return out

    return combined


@attrs.define
class Trainer:
    """All live training objects; built by `Trainer.create`, driven by `run`."""

    recipe: Recipe
    recipe_toml: str
    run_dir: Path
    device: torch.device
    dist: ddp.DistInfo
    model: torch.nn.Module
    step_fn: Any
    g_opt: ddp.GuardedOptimizer
    code_d: Any = None
    code_d_opt: Any = None
    gan_d: Any = None
    gan_d_opt: Any = None
    scaler: Any = None
    loader: Any = None
    step: int = 0
    lr_scale: float = 1.0
    history: list = attrs.field(factory=list)  # [[src_loss, dst_loss], ...] per step (DFL's loss_history)
    preview_batch: dict | None = None
    random_warp: bool = True
    pretrain: bool = False
    writer: Any = None
    bad_steps: int = 0
    rollbacks: int = 0
    skipped: int = 0
    last_losses: dict = attrs.field(factory=dict)
    step_times: list = attrs.field(factory=list)
    stop_requested: bool = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, r: Recipe, *, run_dir: str | Path | None = None, device: str | None = None) -> "Trainer":
        from engine.graph import build
        from engine.optim import freeze_untrainable, make_optimizer, saehd_param_groups
        from engine.train.step import SAEHDStep

        dev = pick_device(device or r.train.device)
        info = ddp.setup(dev.type)
        if info.enabled and dev.type == "cuda":
            dev = torch.device("cuda", info.local_rank)
        if r.train.batch_size % info.world:
            raise TorchSAEError(f"[train].batch_size = {r.train.batch_size} is not divisible by the {info.world} "
                                "DDP ranks (the global batch is split evenly)")
        seed_everything(r.train.seed, r.train.deterministic)
        # Flush denormals to zero, as TensorFlow does on its CPU threads (so DFL did too): AdaBelief's and
        # RMSprop's second moments of small gradients fall into the denormal range, where x86 arithmetic is
        # ~10x slower (measured: AdaBelief step on the quickstart model 1.9-2.2 s -> 0.2-0.3 s).
        torch.set_flush_denormal(True)
        if r.train.threads:
            # OpenMP's spin-waiting makes every parallel region wait for a descheduled thread when another
            # process holds a core (measured: df-ud res 128 fp32 9-11 s/step on 2 threads vs 4.5 s on 1)
            torch.set_num_threads(r.train.threads)
        run = Path(run_dir) if run_dir else ck.run_dir_of(r)
        pretrain = schedules.pretrain_at(r.train.pretrain, r.schedule, 0)
        random_warp = schedules.random_warp_at(r.data.random_warp, r.schedule, 0) and not pretrain

        model = build(r).to(dev)
        if r.compile.channels_last:
            model = model.to(memory_format=torch.channels_last)
        ddp.broadcast_module(model, info)
        at = archi_type(r)
        if at == "graph":
            saveable = dict(model.named_parameters())
            trainable = saveable
        else:
            trainable, saveable = saehd_param_groups(model, at, random_warp)
        if r.train.freeze:
            trainable = freeze_parts(model, r.train.freeze, trainable)
        freeze_untrainable(saveable, trainable)
        if r.train.init_parts:
            init_parts(model, r.train.init_parts)
            ddp.broadcast_module(model, info)
        ocfg = optim_config(r, pretrain=pretrain, seed=r.train.seed * 1000 + 17 + info.rank)
        g_opt = ddp.GuardedOptimizer(make_optimizer(list(saveable.values()), ocfg), info)

        code_d = code_d_opt = gan_d = gan_d_opt = None
        if at == "df" and _max_over_ramps(r, "true_face_power") > 0:
            from engine.modules.discriminators import code_discriminator_for

            code_d = code_discriminator_for(model, r.model.ae_dims).to(dev)
            ddp.broadcast_module(code_d, info)
            code_d_opt = ddp.GuardedOptimizer(make_optimizer(code_d.parameters(), attrs.evolve(ocfg, seed=ocfg.seed + 1)), info)
        if _max_over_ramps(r, "gan_power") > 0:
            from engine.modules.discriminators import gan_discriminator_for

            gan_d = gan_discriminator_for(r.model.resolution, r.loss.gan_patch_size, r.loss.gan_dims).to(dev)
            ddp.broadcast_module(gan_d, info)
            gan_d_opt = ddp.GuardedOptimizer(make_optimizer(gan_d.parameters(), attrs.evolve(ocfg, seed=ocfg.seed + 2)), info)

        amp = r.train.amp
        scaler = None
        if amp == "off":
            autocast = contextlib.nullcontext
        else:
            dtype = torch.bfloat16 if amp == "bf16" else torch.float16
            autocast = lambda: torch.autocast(dev.type, dtype=dtype)  # noqa: E731
            if amp == "fp16":
                scaler = torch.amp.GradScaler(dev.type)
        if r.compile.mode != "off":
            model.forward_train = torch.compile(model.forward_train, mode=r.compile.mode)
        step_fn = SAEHDStep(model=model, g_opt=g_opt, loss_cfg=loss_config(r, pretrain=pretrain), code_d=code_d,
                            code_d_opt=code_d_opt, gan_d=gan_d, gan_d_opt=gan_d_opt, autocast=autocast, scaler=scaler,
                            extra_losses=extra_losses(r, model, dev))
        t = cls(recipe=r, recipe_toml=recipe_mod.dumps(r), run_dir=run, device=dev, dist=info, model=model,
                step_fn=step_fn, g_opt=g_opt, code_d=code_d, code_d_opt=code_d_opt, gan_d=gan_d, gan_d_opt=gan_d_opt,
                scaler=scaler, random_warp=random_warp, pretrain=pretrain)
        return t

    def make_loader(self) -> None:
        from engine.data.train_loader import make_loader

        self.loader = make_loader(self.recipe, rank=self.dist.rank, world=self.dist.world, device=self.device,
                                  random_warp=self.random_warp, pretrain=self.pretrain)

    # ------------------------------------------------------------------ state
    def train_state(self) -> dict[str, Any]:
        st: dict[str, Any] = {
            "g_opt": self.g_opt.state_dict(),
            "step": self.step,
            "lr_scale": self.lr_scale,
            "history": torch.tensor(self.history, dtype=torch.float64) if self.history else torch.zeros(0, 2,
                                                                                                           dtype=torch.float64),
            "rng": rng_state(),
            "rollbacks": self.rollbacks,
        }
        if self.loader is not None:
            st["loader"] = self.loader.state_dict()
        if self.preview_batch is not None:
            st["preview"] = {k: v.cpu() for k, v in self.preview_batch.items()}
        for name in ("code_d", "gan_d"):
            mod = getattr(self, name)
            if mod is not None:
                st[name] = mod.state_dict()
                st[name + "_opt"] = getattr(self, name + "_opt").state_dict()
        if self.scaler is not None:
            st["scaler"] = self.scaler.state_dict()
        return st

    def load(self, path: str | Path, *, weights_only_model: bool = False) -> None:
        payload = ck.load_model_payload(path)
        ck.check_compatible(payload["recipe_toml"], self.recipe, str(path))
        self.model.load_state_dict(payload["model"])
        state = None if weights_only_model else ck.load_train_state(path)
        if state is None:
            self.step = int(payload.get("step", 0))
            dfl_opt = payload.get("dfl_optimizer")
            if dfl_opt is not None and self._load_dfl_optimizer(self.g_opt, self.model, dfl_opt, path):
                log.info("loaded weights and DFL's optimizer state from %s (step %d)", path, self.step)
            else:
                log.info("loaded weights from %s (step %d); optimizer state starts fresh", path, self.step)
            for name in ("code_d", "gan_d"):  # discriminators imported from DFL (engine.dfl.import_dfl_discriminators)
                mod, entry = getattr(self, name), payload.get("dfl_" + name)
                if mod is None or entry is None:
                    continue
                mod.load_state_dict(entry["model"])
                if entry.get("optimizer") is not None:
                    self._load_dfl_optimizer(getattr(self, name + "_opt"), mod, entry["optimizer"], path)
                log.info("%s: DFL's weights%s from %s", name,
                         " and optimizer state" if entry.get("optimizer") else "", path)
            return
        self.g_opt.load_state_dict(state["g_opt"])
        self.step = int(state["step"])
        self.lr_scale = float(state.get("lr_scale", 1.0))
        self.rollbacks = int(state.get("rollbacks", 0))
        self.history = state["history"].tolist()
        for name in ("code_d", "gan_d"):
            mod = getattr(self, name)
            if mod is not None and name in state:
                mod.load_state_dict(state[name])
                getattr(self, name + "_opt").load_state_dict(state[name + "_opt"])
            elif mod is not None:
                log.info("%s: not in the checkpoint, starts fresh (DFL re-initialises a changed discriminator)", name)
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if "preview" in state:
            self.preview_batch = {k: v.to(self.device) for k, v in state["preview"].items()}
        if self.loader is not None and "loader" in state:
            self.loader.load_state_dict(state["loader"])
        set_rng_state(state["rng"])
        log.info("resumed from %s at step %d", path, self.step)

    def _load_dfl_optimizer(self, guarded, module: torch.nn.Module, dfl_opt: dict, path) -> bool:
        """Put optimizer state imported from DFL (`engine.dfl.import_dfl_optimizer`: slots per parameter
        name of `module`, torch layout) into `guarded`'s optimizer. False (state stays fresh, with a
        warning) when the recipe now names another optimizer; CheckpointError when a parameter is unknown."""
        opt = guarded.opt
        if dfl_opt.get("name") != self.recipe.optim.name:
            log.warning("%s: holds DFL %s optimizer state but the recipe uses optim.name = %r; starting with "
                        "fresh optimizer state", path, dfl_opt.get("name"), self.recipe.optim.name)
            return False
        params = dict(module.named_parameters())
        owned = {p for g in opt.param_groups for p in g["params"]}
        unknown = [n for n in dfl_opt["state"] if n not in params or params[n] not in owned]
        if unknown:
            raise CheckpointError(f"{path}: DFL optimizer state for parameters this training does not optimize: "
                                  + ", ".join(unknown[:8]))
        for n, slots in dfl_opt["state"].items():
            p = params[n]
            # empty_like keeps the parameter's memory format (channels_last), as fresh state would have
            opt.state[p] = {k: torch.empty_like(p).copy_(v) for k, v in slots.items()}
        opt.iterations = int(dfl_opt["iterations"])
        return True

    def save(self) -> Path | None:
        if not self.dist.is_main:
            return None
        p = ck.save(self.run_dir, step=self.step, model=self.model, recipe_toml=self.recipe_toml,
                    train_state=self.train_state(), keep_last=self.recipe.train.keep_last)
        log.info("saved %s", p)
        return p

    # ------------------------------------------------------------------ schedules
    def apply_schedules(self) -> None:
        r, s = self.recipe, self.step
        factor = schedules.lr_factor(r.schedule, s, r.train.target_iter) * self.lr_scale
        for opt in (self.g_opt, self.code_d_opt, self.gan_d_opt):
            if opt is not None:
                for g in opt.param_groups:
                    g.setdefault("base_lr", r.optim.lr)
                    g["lr"] = g["base_lr"] * factor
        pretrain = schedules.pretrain_at(r.train.pretrain, r.schedule, s)
        if pretrain != self.pretrain:
            self._switch_pretrain(pretrain)
        rw = schedules.random_warp_at(r.data.random_warp, r.schedule, s) and not self.pretrain
        if rw != self.random_warp:
            self.random_warp = rw
            if self.loader is not None:
                self.loader.set_random_warp(rw)
            if archi_type(r) == "liae":
                from engine.optim import freeze_untrainable, saehd_param_groups

                trainable, saveable = saehd_param_groups(self.model, "liae", rw)
                freeze_untrainable(saveable, trainable)
            log.info("step %d: random warp %s", s, "on" if rw else "off")
        self.step_fn.loss_cfg = loss_config(r, pretrain=self.pretrain, loss=schedules.loss_at(r.loss, r.schedule, s))

    def _switch_pretrain(self, pretrain: bool) -> None:
        """DFL's pretrain -> normal switch (spec §11.6): step and history restart at 0, the inter(s) are
        re-initialised, the preview sample is redrawn; data and loss forcing follow the new mode."""
        self.pretrain = pretrain
        if not pretrain:
            from engine.modules.layers import glorot_init_

            names = ("inter",) if archi_type(self.recipe) == "df" else ("inter_AB", "inter_B")
            for n in names:
                mod = getattr(self.model, n, None)
                if mod is not None:
                    for layer in mod.modules():
                        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
                            glorot_init_(layer)
                    ddp.broadcast_module(mod, self.dist)
            self.history.clear()
            self.preview_batch = None
            log.info("pretrain finished at step %d: inter re-initialised (%s), step counter restarts at 0",
                     self.step, ", ".join(names))
            self.step = 0
        if self.loader is not None:
            self.loader.set_pretrain(pretrain)

    # ------------------------------------------------------------------ one step with the guard
    def train_one(self, batch: dict) -> dict[str, float]:
        t0 = time.perf_counter()
        scale = self.scaler.get_scale() if self.scaler is not None else None
        res = self.step_fn(batch)
        losses = dict(res.losses)
        losses["grad_norm"] = res.grad_norm
        if scale is not None and self.scaler.get_scale() < scale:
            # fp16: the grad scaler found inf/nan in the scaled gradients, skipped the update and lowered its
            # scale (calibration, not divergence): retry with the next batch without counting a bad step
            log.debug("step %d: fp16 gradient overflow, loss scale %g -> %g", self.step, scale, self.scaler.get_scale())
            return losses
        bad = self.g_opt.skipped or not all(math.isfinite(v) for v in losses.values())
        if bad:
            self.bad_steps += 1
            self.skipped += 1
            log.warning("step %d: non-finite loss or gradient (%s); update skipped (%d in a row)", self.step,
                        ", ".join(f"{k}={v:.4g}" for k, v in losses.items()), self.bad_steps)
            if self.bad_steps >= self.recipe.train.max_bad_steps:
                self.rollback()
            return losses
        self.bad_steps = 0
        self.history.append([losses.get("src_loss", float("nan")), losses.get("dst_loss", float("nan"))])
        self.step += 1
        self.step_times.append(time.perf_counter() - t0)
        self.last_losses = losses
        return losses

    def rollback(self) -> None:
        latest = ck.resolve_latest(self.run_dir, required=False)
        self.lr_scale *= self.recipe.train.lr_backoff
        self.rollbacks += 1
        self.bad_steps = 0
        if latest is None:
            log.error("repeated non-finite steps and no checkpoint to roll back to; lr scaled to %.3g", self.lr_scale)
            return
        scale, rollbacks = self.lr_scale, self.rollbacks
        self.load(latest)
        self.lr_scale, self.rollbacks = scale, rollbacks
        log.error("repeated non-finite steps: rolled back to %s (step %d), lr scaled to %.3g", latest.name, self.step,
                  self.lr_scale)

    # ------------------------------------------------------------------ previews and logs
    def preview(self) -> Path | None:
        if not self.dist.is_main or self.preview_batch is None:
            return None
        import cv2

        from engine.train.preview import compose, mask_overlay

        b = self.preview_batch
        self.model.eval()
        with torch.no_grad():
            out = self.model.forward_train(b["target_src"], b["target_dst"])
        self.model.train()
        nhwc = lambda t: t.detach().float().cpu().permute(0, 2, 3, 1).numpy()  # noqa: E731
        a, bb = nhwc(b["target_src"]), nhwc(b["target_dst"])
        am, bm = nhwc(b["target_srcm"]), nhwc(b["target_dstm"])
        cols = {
            "A_original": a, "A_xseg_mask_overlay": np.stack([mask_overlay(x, m) for x, m in zip(a, am)]),
            "A_recon": nhwc(out["pred_src_src"]),
            "B_original": bb, "B_xseg_mask_overlay": np.stack([mask_overlay(x, m) for x, m in zip(bb, bm)]),
            "B_recon": nhwc(out["pred_dst_dst"]), "A_to_B": nhwc(out["pred_src_dst"]),
        }
        img = compose(cols, step=self.step, history=np.asarray(self.history[-100000:]), loss_names=("src", "dst"))
        path = self.run_dir / "logs" / "previews" / f"step_{self.step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), img)
        if self.writer is not None:
            self.writer.add_image("preview", img[..., ::-1].copy(), self.step, dataformats="HWC")
        return path

    def log_scalars(self, losses: dict[str, float], it_s: float) -> None:
        if self.writer is None:
            return
        for k, v in losses.items():
            self.writer.add_scalar(f"loss/{k}" if k != "grad_norm" else "grad_norm", v, self.step)
        self.writer.add_scalar("lr", self.g_opt.param_groups[0]["lr"], self.step)
        self.writer.add_scalar("it_per_s", it_s, self.step)

    def preview_every(self) -> int:
        return self.recipe.train.preview_every or 10 * max(1, self.recipe.model.resolution // 64)

    # ------------------------------------------------------------------ the loop
    def run(self, *, max_steps: int | None = None, progress: bool = True) -> dict[str, Any]:
        """Train until target_iter, `max_steps` steps of this run, or Ctrl-C; save; write summary.json."""
        r = self.recipe
        target = r.train.target_iter
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "logs"))
        prev_handler = signal.getsignal(signal.SIGINT)

        def _on_sigint(_sig, _frame):
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True
            log.warning("Ctrl-C: finishing this step, saving, then stopping (press again to abort)")

        with contextlib.suppress(ValueError):  # not the main thread (tests): no handler
            signal.signal(signal.SIGINT, _on_sigint)
        save_timer = ck.Timer(r.train.save_every_minutes * 60)
        backup_timer = ck.Timer(r.train.backup_every_hours * 3600)
        steps_this_run = 0
        pbar = None
        if progress and self.dist.is_main:
            from tqdm import tqdm

            pbar = tqdm(total=target or None, initial=self.step, unit="it", dynamic_ncols=True)
        last_ckpt = None
        it = iter(self.loader)
        try:
            while not self.stop_requested:
                if target and self.step >= target:
                    break
                if max_steps is not None and steps_this_run >= max_steps:
                    break
                self.apply_schedules()
                batch = next(it)
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
                if self.preview_batch is None:
                    n = min(4, batch["target_src"].shape[0], max(1, 800 // r.model.resolution))
                    self.preview_batch = {k: batch[k][:n].clone() for k in
                                          ("target_src", "target_srcm", "target_dst", "target_dstm")}
                first = self.step == 0
                losses = self.train_one(batch)
                steps_this_run += 1
                if pbar is not None:
                    pbar.n = self.step
                    pbar.set_postfix({k: f"{v:.4f}" for k, v in losses.items() if k in ("src_loss", "dst_loss")})
                    pbar.refresh()
                if self.step % r.train.log_every == 0 and self.step_times:
                    self.log_scalars(losses, 1.0 / max(1e-9, self.step_times[-1]))
                if self.step and self.step % self.preview_every() == 0:
                    self.preview()
                due = (first and self.step == 1) or (r.train.save_every_steps and self.step % r.train.save_every_steps == 0)
                if due or save_timer.due() or (target and self.step >= target):
                    last_ckpt = self.save() or last_ckpt
                    ddp.barrier(self.dist)
                if backup_timer.due() and last_ckpt is not None:
                    ck.backup(self.run_dir, last_ckpt)
        finally:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGINT, prev_handler)
            if pbar is not None:
                pbar.close()
        if self.step and (last_ckpt is None or not last_ckpt.name.endswith(f"{self.step:08d}")):
            last_ckpt = self.save() or last_ckpt
        if self.dist.is_main and self.step:
            self.preview()
        summary = self.summary(steps_this_run, last_ckpt)
        if self.writer is not None:
            self.writer.close()
        if hasattr(self.loader, "close"):
            self.loader.close()
        return summary

    def summary(self, steps_this_run: int, ckpt: Path | None) -> dict[str, Any]:
        times = self.step_times[WARMUP_STEPS:] or self.step_times
        out = {
            "recipe": self.recipe.name,
            "steps_done": steps_this_run,
            "step": self.step,
            "median_s_per_step": statistics.median(times) if times else None,
            "final_losses": self.last_losses,
            "checkpoint": str(ckpt) if ckpt else None,
            "skipped_steps": self.skipped,
            "rollbacks": self.rollbacks,
            "device": str(self.device),
            "world_size": self.dist.world,
            "amp": self.recipe.train.amp,
            "compile": self.recipe.compile.mode,
        }
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.run_dir / "summary.json", json.dumps(out, indent=2), durable=True)
        return out


def train(r: Recipe, *, resume: bool | str | None = None, run_dir: str | Path | None = None,
          device: str | None = None, max_steps: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Train `r`. resume: None/False = new run (refuses a run folder that already has checkpoints);
    True = latest checkpoint of the run folder; a path = that checkpoint (file, step folder or run folder)."""
    t = Trainer.create(r, run_dir=run_dir, device=device)
    try:
        t.make_loader()
        existing = ck.resolve_latest(t.run_dir, required=False)
        if resume:
            src = existing if resume is True else Path(resume)
            if src is None:
                raise CheckpointError(f"--resume: no checkpoint in {t.run_dir / 'checkpoints'} "
                                      "(start without --resume, or pass a checkpoint path)")
            t.load(src)
        elif existing is not None:
            raise CheckpointError(f"{t.run_dir} already holds checkpoints (latest {existing.name}); pass --resume to "
                                  "continue it, or set [train].run_dir / --run-dir to start a new run")
        summary = t.run(max_steps=max_steps, progress=progress)
    finally:
        ddp.cleanup(t.dist)
    if t.dist.is_main:
        log.info("summary: %s", json.dumps(summary))
    return summary
