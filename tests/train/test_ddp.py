"""DDP on two CPU processes (gloo, launched by torchrun): the update equals the single-process one at the
combined batch; only rank 0 writes checkpoints; resume works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import recipe
from engine.train import checkpoint as ck
from engine.train import distributed as ddp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TINY = ROOT / "recipes" / "tests" / "tiny_df.toml"


def _torchrun(*args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *map(str, args)]
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def test_two_ranks_equal_single_process_at_combined_batch(tmp_path):
    sys.path.insert(0, str(HERE))
    try:
        import ddp_worker
    finally:
        sys.path.remove(str(HERE))
    out = tmp_path / "ddp.pt"
    _torchrun(HERE / "ddp_worker.py", out, TINY)
    r = recipe.load(TINY)
    single = ddp_worker.one_step(r, ddp_worker.fixed_batch(4, r.model.resolution), ddp.DistInfo())
    two = torch.load(out, weights_only=True)
    grads = [k for k in single if k.startswith("grad.")]
    assert grads
    for k in grads:
        # the gradient of the batch SUM: 2+2 samples summed across ranks == 4 samples in one process, up to
        # float summation order
        scale = single[k].abs().max().item()
        torch.testing.assert_close(two[k], single[k], rtol=1e-4, atol=1e-5 * scale + 1e-12, msg=k)
    # and both applied the same update (RMSprop's first step is ~sign(g), so compare where |g| is not tiny)
    for k in grads:
        w = "weight." + k[5:]
        big = single[k].abs() > 1e-3 * single[k].abs().max()
        torch.testing.assert_close(two[w][big], single[w][big], rtol=1e-5, atol=1e-6, msg=w)


def test_torchrun_training_rank0_writes_and_resume(tmp_path, facesets):
    a, b = facesets
    run = tmp_path / "run"
    args = ["-m", "engine", "train", TINY, f"data.src='{a}'", f"data.dst='{b}'", "data.workers=0",
            f"train.run_dir='{run}'", "train.batch_size=2", "train.target_iter=0", "--max-steps", "2",
            "--no-progress"]
    _torchrun(*args)
    names = [p.name for p in ck.complete_checkpoints(run / "checkpoints")]
    assert names == ["step_00000001", "step_00000002"]
    assert not list((run / "checkpoints").glob(".tmp-*"))
    _torchrun(*args, "--resume")
    assert ck.load_model_payload(run)["step"] == 4
