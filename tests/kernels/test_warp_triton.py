"""The warp's Triton sampler and its torch.library registration (kernels/warp/triton.py, op.py).

Triton picks its numpy interpreter (TRITON_INTERPRET=1) when triton.language is imported, so the
interpreter checks run this file as a script in a fresh process with the variable set; the script
compares the kernel with torch.grid_sample (the CPU path, same contract) on curated tiny shapes
(odd sizes, B = 1, H ≠ W, 1 and 3 channels, coordinates outside the image, with and without a
weight) and runs warp_batch(impl="triton") against impl="cpu" on DFL's recorded res 32 and 64
parameters. Tolerance 1e-6 against grid_sample (same taps in fp32, a different order); against the C
kernel 3e-5 without the grid and 2e-4 with it (it evaluates the grid in pixels, ~1e-5 px apart).
Full-size kernel runs (compiled Triton) need CUDA and are marked `gpu`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent.parent / "golden" / "warp"
ATOL = 1e-6  # kernel vs torch.grid_sample (same taps, fp32, different summation order)
EXACT, WARP_ATOL = 3e-5, 2e-4  # warp_batch triton vs cpu (C kernel): without / with the grid warp
KERNEL_SHAPES = [  # (N, C, H, W, Ho, Wo)
    (1, 3, 5, 7, 6, 4),
    (2, 1, 9, 9, 9, 9),
    (3, 3, 4, 11, 3, 8),
    (1, 2, 1, 1, 2, 3),
]


def _golden_params(path: Path) -> tuple[dict, np.ndarray]:
    d = np.load(path)
    p = {k: d[k] for k in ("mapx", "mapy", "rmat", "umat")}
    p.update(w=int(d["w"]), rw=None if int(d["rw"]) < 0 else int(d["rw"]), flip=bool(d["flip"]))
    return p, d["image"]


def _interpreter_checks() -> None:
    """Runs in the child process (TRITON_INTERPRET=1). Raises AssertionError on the first mismatch."""
    from kernels.warp import triton as triton_path
    from kernels.warp import warp_batch
    from kernels.warp.batched import sample_torch
    from kernels.warp.op import warp_sample

    assert os.environ.get("TRITON_INTERPRET") == "1"
    g = torch.Generator().manual_seed(0)
    for n, c, h, w, ho, wo in KERNEL_SHAPES:
        img = torch.rand(n, c, h, w, generator=g)
        grid = torch.rand(n, ho, wo, 2, generator=g) * 2.8 - 1.4  # reaches ~2 px outside the image
        weight = torch.rand(n, ho, wo, generator=g)
        for cubic in (True, False):
            for zeros in (True, False):
                for wt in (None, weight):
                    want = sample_torch(img, grid, wt, cubic, zeros)
                    got = triton_path.launch(img, grid, wt, cubic, zeros)
                    err = (got - want).abs().max().item()
                    assert err <= ATOL, f"kernel {(n, c, h, w, ho, wo)} cubic={cubic} zeros={zeros} " \
                                        f"weight={wt is not None}: max err {err:.3g}"
        via_op = warp_sample(img, grid, weight, True, True)
        assert (via_op - sample_torch(img, grid, weight, True, True)).abs().max().item() <= ATOL, "op"
    half = torch.rand(1, 3, 6, 5, generator=g, dtype=torch.float64)
    out = triton_path.launch(half, torch.zeros(1, 2, 2, 2), None, True, False)
    assert out.dtype == torch.float64 and torch.isfinite(out).all()

    cases = [("warp_res32_saehd_ranges_seed1_flip1", (True, True, True, True), "cubic"),   # network input, rw
             ("warp_res32_saehd_ranges_seed1_flip1", (False, True, True, False), "linear"),  # mask
             ("warp_res64_saehd_ranges_seed0_flip1", (True, True, True, False), "cubic")]   # coverage weight
    for name, flags, interp in cases:
        p, image = _golden_params(GOLDEN / f"{name}.npz")
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
        a = warp_batch(x, [p], *flags, interp=interp, impl="triton")
        b = warp_batch(x, [p], *flags, interp=interp, impl="cpu")
        err = (a - b).abs().max().item()
        # impl="cpu" is the C kernel, which evaluates the grid in pixels rather than normalised
        # coordinates (~1e-5 px apart): the same tolerances as in test_warp.py
        tol = WARP_ATOL if flags[0] else EXACT
        assert err <= tol, f"warp_batch {name} {flags} {interp}: triton vs cpu max err {err:.3g}"


def test_triton_kernel_under_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, __file__], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"interpreter checks failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "interpreter checks passed" in proc.stdout


def test_op_registration_opcheck():
    """Schema, fake-tensor propagation and AOT tracing of torch.ops.torchsae.warp_sample (CPU body)."""
    from kernels.warp.op import warp_sample  # noqa: F401  (registers the op)

    g = torch.Generator().manual_seed(1)
    img = torch.rand(2, 3, 6, 7, generator=g)
    grid = torch.rand(2, 4, 5, 2, generator=g) * 2.4 - 1.2
    weight = torch.rand(2, 4, 5, generator=g)
    torch.library.opcheck(torch.ops.torchsae.warp_sample.default, (img, grid, weight, True, True))
    # the other variant (no weight, bilinear, clamped taps): schema and fake-tensor checks only
    torch.library.opcheck(torch.ops.torchsae.warp_sample.default, (img, grid, None, False, False),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.slow
def test_batched_path_compiles_fullgraph():
    """Composition + sampling trace into one graph (no breaks) and match eager."""
    from kernels.warp import random_warp_params
    from kernels.warp.batched import compose_grid
    from kernels.warp.op import warp_sample

    bp = random_warp_params(2, 64, True, generator=torch.Generator().manual_seed(3))
    img = torch.rand(2, 3, 64, 64)

    def f(x, nodes, rmat, flip):
        from kernels.warp.batched import WarpBatchParams

        p = WarpBatchParams(64, None, nodes, rmat, flip)
        grid, weight, zeros = compose_grid(p, True, True, True, True, True)
        return warp_sample(x, grid, weight, True, zeros)

    eager = f(img, bp.nodes, bp.rmat, bp.flip)
    compiled = torch.compile(f, fullgraph=True)(img, bp.nodes, bp.rmat, bp.flip)
    assert (eager - compiled).abs().max().item() <= 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (compiled Triton)")
def test_triton_matches_batched_on_cuda():
    from kernels.warp import random_warp_params, warp_batch

    bp = random_warp_params(8, 256, True, generator=torch.Generator(device="cuda").manual_seed(0))
    img = torch.rand(8, 3, 256, 256, device="cuda")
    for flags, interp in (((True, True, True, True), "cubic"), ((False, True, True, False), "linear")):
        a = warp_batch(img, bp, *flags, interp=interp, impl="triton")
        b = warp_batch(img, bp, *flags, interp=interp, impl="batched")
        assert (a - b).abs().max().item() <= 1e-5


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _interpreter_checks()
    print("interpreter checks passed")
