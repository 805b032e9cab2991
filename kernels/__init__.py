"""The kernel ops: kernels/dssim, kernels/warp, kernels/dfl_update, each with the same file roles (reference.py,
batched.py, cpu.py + C source, triton.py, op.py: the choice) and one set of choice rules (dispatch.py).
kernels/README.md describes both. This package imports nothing (kernels.errors stays torch-free for the CLI)."""
