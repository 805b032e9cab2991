"""SAEHD loader throughput (docs/dfl.md §5): samples/s delivered by engine.data.loader, batch 8, 2 worker processes.

Figures: res 128 and 256 (model face type f), without and with ct_mode rct, SAEHD's default augmentation
otherwise (random warp on, dst flip on). Providers:
  reference   pipeline "dfl": DFL's per-sample numpy/OpenCV SampleProcessor (decode every use)
  fast        pipeline "fast": model-resolution uint8 cache + batched torch warp (steady state: the cache
              is filled during the warm-up epoch, as it is after the first epoch of a training run)
One item = one batch row = one src face + one dst face with all four outputs each (what one sample of
a training step consumes). The faceset is synthetic (tests/synthetic_faces.py):
48 src + 48 dst 512×512 whole-face DFLJPGs, every 4th src face with a 256² XSeg mask.
Bar (brief): ≥ 3× a df-ud res-128 batch-4 step on this CPU (~1-2 s/step → ≥ 8-12 samples/s).
"""

from __future__ import annotations

import pytest

from tests.synthetic_faces import write_synthetic_faceset
from engine.data.loader import build_loader
from engine.recipe.specs import DataSpec

BATCH, WORKERS, N_FACES, BATCHES_PER_CALL = 8, 2, 48, 4


@pytest.fixture(scope="module")
def faceset(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_faceset")
    write_synthetic_faceset(root / "src", N_FACES, size=512, face_type="wf", seed=1, xseg_every=4)
    write_synthetic_faceset(root / "dst", N_FACES, size=512, face_type="wf", seed=2)
    return root


@pytest.mark.parametrize("provider", ["reference", "fast"])
@pytest.mark.parametrize("ct", ["none", "rct"])
@pytest.mark.parametrize("res", [128, 256])
def test_loader_samples_per_second(benchmark, tag, faceset, res, ct, provider):
    tag(f"data loader res{res} b{BATCH} ct={ct} workers{WORKERS}", provider, items=BATCH * BATCHES_PER_CALL,
        workers=WORKERS, faces=N_FACES)
    spec = DataSpec(src=str(faceset / "src"), dst=str(faceset / "dst"), ct_mode=ct, workers=WORKERS,
                    pipeline="dfl" if provider == "reference" else "fast")
    with build_loader(spec, resolution=res, face_type="f", batch_size=BATCH, seed=0) as loader:
        for _ in range(N_FACES // BATCH + 1):  # one epoch: starts the workers and fills the fast cache
            next(loader)

        def take():
            for _ in range(BATCHES_PER_CALL):
                next(loader)

        benchmark(take)
