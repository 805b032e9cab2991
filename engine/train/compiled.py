"""[compile].mode for the training step: torch.compile of the model's forward (and, through AOTAutograd,
its backward), with CUDA graphs for small, launch-bound batches.

    mode, why = resolve_mode(recipe.compile.mode, device)     # logged once by the trainer
    step_inputs = compile_model(model, mode)                  # None unless CUDA graphs are on
    ...
    batch = step_inputs(batch) if step_inputs else batch      # before each training step

Modes:
- "off": eager.
- "default" / "max-autotune": `torch.compile(model.forward_train, mode=...)` (Inductor kernels).
- "reduce-overhead": the same, plus CUDA graphs (cudagraph trees): the forward and the backward of
  forward_train each replay as one graph launch, which is what a df-ud 128 batch-4 step needs on a large
  GPU (~18-23 ms eager, launch-bound: most of that is the CPU issuing a few thousand small kernels).
  What it takes to be correct under graph replay:
  * static inputs: the graphs read their inputs at fixed addresses. `StaticInputs` keeps one
    persistent device buffer per input (marked with torch._dynamo.mark_static_address, so the graphs
    read them in place), copies each step's batch into them, and marks the step boundary
    (torch.compiler.cudagraph_mark_step_begin) so outputs of the previous replay may be overwritten;
  * gradients: the backward graph's outputs become `.grad`; the step zeroes gradients with
    set_to_none=True before every forward (engine.train.step), so no gradient of the previous replay
    is alive when the graph runs again, and the optimizer (DFL's RMSprop/AdaBelief, foreach ops) and the
    GradScaler's unscale/inf check read and scale them in place inside the same step — they run eagerly,
    after the replay, and need no capture of their own (their per-step Python floats, lr_cos and the
    schedules' lr, would otherwise be baked into a captured graph);
  * the losses (DSSIM's custom op, masks, style terms) run eagerly between the two replays.
  Without CUDA (CPU training) there are no CUDA graphs: the mode falls back to eager, with the reason
  logged, because torch.compile's CPU code is slower than eager for these models (docs/train_perf.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

__all__ = ["resolve_mode", "compile_model", "StaticInputs", "GRAPHED_INPUTS"]

log = logging.getLogger("torchsae.train")

GRAPHED_INPUTS = ("warped_src", "warped_dst")  # what forward_train reads from the batch


def resolve_mode(mode: str, device: torch.device) -> tuple[str, str]:
    """[compile].mode -> (the mode used, why)."""
    if mode == "reduce-overhead" and device.type != "cuda":
        return "off", (f"reduce-overhead: CUDA graphs need a CUDA device (training on {device.type}); running "
                       "eagerly (torch.compile's CPU code is slower than eager for these models; set "
                       "[compile].mode = 'default' to compile anyway)")
    if mode == "off":
        return "off", "eager"
    return mode, f"torch.compile(mode={mode!r}) of forward_train"


def compile_model(model: torch.nn.Module, mode: str) -> StaticInputs | None:
    """Compile `model.forward_train` for a resolved `mode` (see `resolve_mode`); returns the StaticInputs
    the training loop must route each batch through when CUDA graphs are on, else None."""
    if mode == "off":
        return None
    model.forward_train = torch.compile(model.forward_train, mode=mode)
    return StaticInputs() if mode == "reduce-overhead" else None


class StaticInputs:
    """Persistent device buffers for the graphed inputs (GRAPHED_INPUTS); `__call__(batch)` copies the
    batch into them (other keys pass through), marks a new CUDA-graph step and returns the batch to use.
    A change of shape or dtype (another batch size) allocates new buffers (and the graphs re-record)."""

    def __init__(self, keys: tuple[str, ...] = GRAPHED_INPUTS):
        self.keys = keys
        self.buffers: dict[str, torch.Tensor] = {}

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(batch)
        for k in self.keys:
            x = batch.get(k)
            if x is None:
                continue
            buf = self.buffers.get(k)
            if buf is None or buf.shape != x.shape or buf.dtype != x.dtype or buf.device != x.device:
                buf = torch.empty_like(x, memory_format=torch.contiguous_format)
                torch._dynamo.mark_static_address(buf)
                self.buffers[k] = buf
            buf.copy_(x, non_blocking=True)
            out[k] = buf
        if hasattr(torch, "compiler") and hasattr(torch.compiler, "cudagraph_mark_step_begin"):
            torch.compiler.cudagraph_mark_step_begin()
        return out
