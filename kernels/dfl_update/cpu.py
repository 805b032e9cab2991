"""DFL's optimizer update, the C path ("cpu"): builds dfl_update_cpu.c once and runs it on element ranges from a
thread pool (the pattern of kernels/dssim/cpu.py and kernels/warp/cpu.py).

Why: the torch._foreach_* update (batched.py) is ~9 passes over every parameter-sized array
per step (scale, two for the first moment, the difference, two for the second, sqrt, +eps, addcdiv);
the update is memory-bound, so one fused pass is ~3x less traffic (`make bench SUITE=kernels`, groups
"dfl update adabelief|rmsprop df128", over df-ud res 128's 54.5M parameters, track the ratio).

The library is cached under $TORCHSAE_CACHE (default ~/.cache/torchsae)/kernels/, keyed by the source,
flags, compiler version and CPU. Without a working C compiler `available()` is False and auto takes the
batched path (op.py).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from kernels import cbuild

SOURCE = Path(__file__).with_name("dfl_update_cpu.c")
CFLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-std=c11", "-fno-math-errno"]
KINDS = {"rmsprop": 0, "adabelief": 1}
# below this many elements a call is not split across threads (pool overhead ~ tens of µs)
_MIN_PER_THREAD = 1 << 16

_POOL = cbuild.RangePool("torchsae-optim")


def _build(cflags: list[str] = CFLAGS) -> ctypes.CDLL:
    return cbuild.build_function(SOURCE, cflags, "dfl_update",
                                 [ctypes.c_int, ctypes.c_int] + [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 2
                                 + [ctypes.c_void_p], op="dfl_update", ldflags=("-lm",))


_LIB = cbuild.LazyLibrary(_build, "dfl_update", "auto uses the batched (torch._foreach) path")


def available() -> bool:
    """True when the C kernel is built (building it now if needed) and loadable."""
    return _LIB.get() is not None


def unavailable_reason() -> str:
    _LIB.get()
    return _LIB.reason


def _ptrs(ts: list[torch.Tensor]):
    return (ctypes.c_void_p * len(ts))(*[t.data_ptr() for t in ts])


def update_(kind: str, params: list[torch.Tensor], grads: list[torch.Tensor], slots: list[list[torch.Tensor]],
            *, lr: float, grad_scale: float, eps: float, c1: float, c2: float = 0.0) -> None:
    """In place: the moments in `slots` (RMSprop [acc], AdaBelief [ms, vs], one tensor per parameter) and
    the parameters. Every tensor float32 on the CPU, each parameter's gradient and moments with its strides,
    memory dense (`fusable` checks). c1 = rho (RMSprop) or beta_1, c2 = beta_2 (AdaBelief)."""
    lib = _LIB.get()
    if lib is None:
        raise RuntimeError(f"dfl_update: the C kernel is unavailable: {_LIB.reason}")
    k = len(params)
    if k == 0:
        return
    sizes = [p.numel() for p in params]
    n_arr = (ctypes.c_int64 * k)(*sizes)
    pp, gp = _ptrs(params), _ptrs(grads)
    s1 = _ptrs(slots[0])
    s2 = _ptrs(slots[1]) if len(slots) > 1 else None
    hp = (ctypes.c_float * 5)(lr, grad_scale, eps, c1, c2)
    total = sum(sizes)
    code = KINDS[kind]

    def run(lo: int, hi: int) -> int:
        return lib.dfl_update(code, k, pp, gp, s1, s2, n_arr, lo, hi, hp)

    rcs = _POOL.map(run, total, max(1, min(torch.get_num_threads(), total // _MIN_PER_THREAD)))
    if any(rc != 0 for rc in rcs):
        raise RuntimeError(f"dfl_update: the C kernel refused kind {kind!r}")


def _dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)


def _layout(t: torch.Tensor) -> tuple[int, ...]:
    """Strides of the dimensions longer than 1 (a size-1 dimension's stride is arbitrary: a channels_last
    1x1 conv kernel and its NCHW-strided gradient lie in memory alike)."""
    return tuple(st for sz, st in zip(t.shape, t.stride()) if sz > 1)


def fusable_one(p: torch.Tensor, g: torch.Tensor, slots: list[torch.Tensor]) -> str | None:
    """None when `update_` can take this parameter with its gradient and moments, else why not."""
    group = [p, g, *slots]
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in group):
        return "not float32 on the CPU"
    if not all(_dense(t) for t in group) or any(_layout(t) != _layout(p) for t in group[1:]):
        return "a gradient or moment laid out differently from its parameter"
    return None


def fusable(params: list[torch.Tensor], grads: list[torch.Tensor], slots: list[list[torch.Tensor]]) -> str | None:
    """None when `update_` can take all these tensors, else the first reason it cannot."""
    for i, p in enumerate(params):
        why = fusable_one(p, grads[i], [s[i] for s in slots])
        if why is not None:
            return why
    return None
