"""Bench suite "pipeline" (issue #12: the GPU never waits): the data pipeline against the step it feeds.

    make bench SUITE=pipeline                 # device = CUDA when present, else CPU
    make bench SUITE=pipeline DEVICE=cuda     # python -m bench --suite pipeline --device cuda

Configurations: df-ud 128 batch 4 (recipes/df128.toml) and df-ud 256 batch 32 (recipes/df256.toml), bf16
autocast, on the demo faces (workspace/demo; synthetic 512² faces when absent: extra_info["faces"]).
Figures (groups) and providers:

  pipeline decode+prepare res R       decode: one loader process decoding a 512² DFLJPG and converting it
                                      to the model's cached geometry (first epoch only), faces/s
  pipeline loader res R bB            samples/s the loader delivers when consumed back to back, steady
                                      state (cache full), with the workers a GPU box would use
                                      (workers "auto" for CUDA: usable cores − 1; extra_info["workers"]):
                                        reference   pipeline "fast": float32 batches made in the workers
                                        device-raw  pipeline "device", the workers' raw batches only
                                        device      pipeline "device": raw batch, copy, augmentation on
                                                    the device (synchronised)
  pipeline augment res R bB           one batch's augmentation (both sides), ms/batch:
                                        reference   "fast"'s per-batch CPU work in one process
                                        device      engine.data.device.DeviceAugment on the device
  train <config> bf16 <compile mode>  samples/s of the training step:
                                        reference   the step on a fixed batch (Trainer.train_one)
                                        loop        Trainer.run's loop body with the real loader (auto
                                                    pipeline and workers); "vs reference" is then
                                                    step time / loop time (1.00x: the GPU never waits)
                                        loop-fast-w2, loop-device-w1 (CPU, 128 b4 only): the designs the
                                                    2-core default was chosen against
                                      extra_info: loader wait % of the loop's wall time, the resolved
                                      pipeline/workers, load average before/after.

On CUDA every figure synchronises inside the timed call; compile variants "default" and
"reduce-overhead" are added (128 b4) / "default" (256 b32). On CPU only eager runs, and the 256 b32
figures time TORCHSAE_BENCH_PIPELINE_ROUNDS (default 2) steps instead of 20 (a step takes ~20 s on the
2-core box; the whole suite then takes ~10 min there). Figures on a machine shared with other jobs are
only comparable within one run (ratios); see bench/README.md.
"""

from __future__ import annotations

import gc
import itertools

import pytest
import torch

from bench.pipeline.common import (CONFIGS, DEVICE, ON_CUDA, VARIANTS, faces, fill_cache, load_avg, load_recipe,
                                   loop_iteration, make_trainer, sync, synthetic_batch)
from engine.data.auto import resolve_workers
from engine.faces.faceset import Faceset
from engine.data.device import unpack
from engine.data.loader import build_loader
from engine.data.sample import SampleOptions, prepare_face, process_fast_batch, sample_rngs
from engine.recipe.specs import DataSpec

LOADER_WORKERS = resolve_workers("auto", torch.device("cuda"))[0]  # what a GPU box's "auto" uses here
LOADER_BATCHES = 4  # batches per timed call of the loader figures


@pytest.fixture(scope="module")
def facesets(tmp_path_factory):
    return faces(tmp_path_factory.mktemp("pipeline_faces"))


# ------------------------------------------------------------------------------------------ data figures
@pytest.mark.parametrize("res", [128, 256])
def test_decode(benchmark, tag, facesets, res):
    src, _dst, label = facesets
    fs = Faceset(src)
    opts = SampleOptions(resolution=res, face_type="f")
    n = 8
    tag(f"pipeline decode+prepare res{res}", "decode", items=n, faces=label, process="one")
    idx = itertools.cycle(range(len(fs)))

    def run():
        for _ in range(n):
            prepare_face(fs.face(next(idx)), opts)

    benchmark(run)


def _spec(src: str, dst: str, pipeline: str, workers: int) -> DataSpec:
    return DataSpec(src=src, dst=dst, pipeline=pipeline, workers=workers)


@pytest.mark.parametrize("provider", ["reference", "device-raw", "device"])
@pytest.mark.parametrize("cfg", ["df-ud-128-b4", "df-ud-256-b32"])
def test_loader(benchmark, tag, facesets, cfg, provider):
    c = CONFIGS[cfg]
    src, dst, label = facesets
    pipeline = "fast" if provider == "reference" else "device"
    tag(f"pipeline loader res{c.resolution} b{c.batch}", provider, items=c.batch * LOADER_BATCHES,
        workers=LOADER_WORKERS, faces=label, device=str(DEVICE), load_before=load_avg())
    loader = build_loader(_spec(src, dst, pipeline, LOADER_WORKERS), resolution=c.resolution, face_type="f",
                          batch_size=c.batch, seed=0, device=DEVICE)
    fill_cache(loader)
    source = loader.loader if provider == "device-raw" else loader  # raw: the FaceLoader under DeviceLoader
    try:
        for _ in range(2):
            next(source)

        def run():
            for _ in range(LOADER_BATCHES):
                b = next(source)
                if ON_CUDA and provider == "reference":
                    {k: v.to(DEVICE, non_blocking=True) for k, v in b.items()}
            sync()

        benchmark.pedantic(run, rounds=5 if not ON_CUDA else 20, iterations=1, warmup_rounds=1)
    finally:
        loader.close()
    benchmark.extra_info["load_after"] = load_avg()


@pytest.mark.parametrize("provider", ["reference", "device"])
@pytest.mark.parametrize("cfg", ["df-ud-128-b4", "df-ud-256-b32"])
def test_augment(benchmark, tag, facesets, cfg, provider):
    c = CONFIGS[cfg]
    src, dst, label = facesets
    tag(f"pipeline augment res{c.resolution} b{c.batch}", provider, items=c.batch, faces=label,
        device=str(DEVICE) if provider == "device" else "cpu")
    loader = build_loader(_spec(src, dst, "device", 0), resolution=c.resolution, face_type="f", batch_size=c.batch,
                          seed=0, device=DEVICE)
    try:
        raw = next(loader.loader)
        if provider == "device":
            moved = unpack(raw["packed"].to(DEVICE), raw["layout"])
            aug = loader.augment

            def run():
                aug(moved)
                sync()
        else:
            cpu = unpack(raw["packed"], raw["layout"])
            opts = loader.batches.opts
            keys = {"src": range(c.batch), "dst": range(c.batch, 2 * c.batch)}

            def run():
                for side in ("src", "dst"):
                    rngs = [sample_rngs(k) for k in keys[side]]
                    process_fast_batch(cpu[f"{side}_image"].numpy(), cpu[f"{side}_masks"].numpy(),
                                       [s for s, _ in rngs], opts[side])

        benchmark.pedantic(run, rounds=10 if not ON_CUDA else 50, iterations=1, warmup_rounds=1)
    finally:
        loader.close()


# ------------------------------------------------------------------------------------------ step vs loop
_TRAINERS: dict = {}


def _trainer(cfg: str, mode: str, facesets, tmp_path_factory):
    key = (cfg, mode)
    if key not in _TRAINERS:
        for old in list(_TRAINERS):  # one model alive at a time
            t_old = _TRAINERS.pop(old)
            if t_old.loader is not None:
                t_old.loader.close()
        gc.collect()
        if ON_CUDA:
            torch.cuda.empty_cache()
        src, dst, _ = facesets
        r = load_recipe(CONFIGS[cfg], src, dst, tmp_path_factory.mktemp("run"), compile_mode=mode)
        t = make_trainer(r)
        t.make_loader()
        fill_cache(t.loader._loader)
        _TRAINERS[key] = t
    return _TRAINERS[key]


def _providers():
    out = []
    for cfg, modes in VARIANTS.items():
        for mode in modes:
            provs = ["reference", "loop"]
            if not ON_CUDA and cfg == "df-ud-128-b4":
                provs += ["loop-fast-w2", "loop-device-w1"]
            out += [(cfg, mode, p) for p in provs]
    return out


@pytest.mark.parametrize(("cfg", "mode", "provider"), _providers())
def test_train(benchmark, tag, facesets, tmp_path_factory, cfg, mode, provider):
    c = CONFIGS[cfg]
    t = _trainer(cfg, mode, facesets, tmp_path_factory)
    warmup = 1 if mode == "off" else 3  # compiled: compile, then CUDA-graph warm-up and recording
    bm = tag(f"train {cfg} bf16 compile={mode}", provider, items=c.batch, faces=facesets[2], device=str(DEVICE),
             rounds=c.rounds, load_before=load_avg())
    if provider == "reference":
        batch = {k: v.to(DEVICE) for k, v in synthetic_batch(c.batch, c.resolution).items()}
        bm.pedantic(lambda: t.train_one(batch), rounds=c.rounds, iterations=1, warmup_rounds=warmup)
    else:
        loader = t.loader
        if provider != "loop":  # the alternative designs (CPU): a loader built with other settings
            from engine.data.train_loader import make_loader

            pipeline, workers = {"loop-fast-w2": ("fast", 2), "loop-device-w1": ("device", 1)}[provider]
            r = load_recipe(c, facesets[0], facesets[1], tmp_path_factory.mktemp("alt"), pipeline=pipeline,
                            workers=workers)
            loader = make_loader(r, rank=0, world=1, device=t.device, random_warp=t.random_warp, pretrain=False)
            fill_cache(loader._loader)
        from engine.train.loopstats import LoopClock

        t.clock = LoopClock()
        it = iter(loader)
        try:
            bm.pedantic(lambda: loop_iteration(t, it), rounds=c.rounds, iterations=1, warmup_rounds=warmup)
        finally:
            if loader is not t.loader:
                loader.close()
        s = t.clock.summary(warmup)
        bm.extra_info.update(loader_wait_pct=s["loader_wait_pct"], loader_wait_s=s["loader_wait_s_per_step"],
                             data=loader.describe())
    bm.extra_info["load_after"] = load_avg()
    assert t.skipped == 0
