"""DDP on two CPU processes (gloo, launched by torchrun): the update equals the single-process one at the
combined batch; only global rank 0 writes checkpoints; each rank trains on its own faceset shard; resume
works, on one node and on two "nodes" (two torchrun agents meeting through a c10d rendezvous on localhost)."""

from __future__ import annotations

import os
import socket
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


def test_torchrun_training_saves_every_ranks_loader_position(tmp_path, facesets):
    """Each rank reads its own shard: the checkpoint keeps both ranks' stream positions, and a resume
    restores each rank's own one."""
    a, b = facesets
    run = tmp_path / "run"
    args = ["-m", "engine", "train", TINY, f"data.src='{a}'", f"data.dst='{b}'", "data.workers=0",
            f"train.run_dir='{run}'", "train.batch_size=2", "train.target_iter=0", "train.save_every_steps=0",
            "--max-steps", "3", "--no-progress"]
    _torchrun(*args)
    st = ck.load_train_state(ck.resolve_latest(run))["loader"]
    assert st["world"] == 2 and len(st["ranks"]) == 2
    r0, r1 = st["ranks"]
    assert r0["batch_size"] == r1["batch_size"] == 1 and r0["planner"]["step"] == r1["planner"]["step"] == 3
    assert r0["seed"] != r1["seed"]  # independent streams over different shards


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(args: list, tmp_path, timeout: int = 600) -> list[str]:
    """Launch two torchrun agents (--nnodes=2, one process each) that meet through a c10d rendezvous on
    localhost, as two machines would; return each agent's output."""
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    procs = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={node}",
               "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
               f"--rdzv-id=torchsae-test-{port}", *map(str, args)]
        log = open(tmp_path / f"node{node}.log", "w+")
        procs.append((subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), log))
    outs = []
    try:
        for p, log in procs:
            p.wait(timeout=timeout)
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
            log.seek(0)
            outs.append(log.read())
            log.close()
    for (p, _), out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    return outs


def test_two_nodes_c10d_rendezvous_only_global_rank0_writes(tmp_path, facesets):
    """2 nodes × 1 process: the node whose process has LOCAL_RANK 0 but global RANK 1 must not write
    (a local-rank check would make both nodes save into the shared run folder); resume across both."""
    a, b = facesets
    run = tmp_path / "run"
    args = ["-m", "engine", "train", TINY, f"data.src='{a}'", f"data.dst='{b}'", "data.workers=0",
            f"train.run_dir='{run}'", "train.batch_size=2", "train.target_iter=0", "--max-steps", "2",
            "--no-progress"]
    outs = _two_nodes(args, tmp_path)
    savers = [o for o in outs if "saved " in o]
    assert len(savers) == 1 and "[rank 0] saved" in savers[0], outs
    assert "[rank 1]" in outs[0] + outs[1]
    assert [p.name for p in ck.complete_checkpoints(run / "checkpoints")] == ["step_00000001", "step_00000002"]
    st = ck.load_train_state(ck.resolve_latest(run))["loader"]
    assert st["world"] == 2 and [r["planner"]["step"] for r in st["ranks"]] == [2, 2]
    _two_nodes([*args, "--resume"], tmp_path)
    st = ck.load_train_state(ck.resolve_latest(run))["loader"]
    assert ck.load_model_payload(run)["step"] == 4 and [r["planner"]["step"] for r in st["ranks"]] == [4, 4]
