"""Latent adapter: maps one identity's latent into a shared latent space (TorchSAE addition, not in DFL).

Used by explicit graphs such as ``Encoder_X -> Adapter_X -> shared latent -> Decoder_Y``: each identity
keeps its own small adapter in front of (or behind) shared parts, so a new identity can be attached to a
trained model by training only its adapter (and decoder).

Form (residual, shape-preserving):

    y = x + f(x),   f = second ∘ act ∘ first

- kind ``"conv1x1"`` (latent (N, C, H, W)): ``conv1`` 1×1 C -> hidden, ``conv2`` 1×1 hidden -> C.
  A per-position channel mixer: cheap (2·C·hidden weights) and keeps the spatial layout the decoder expects.
- kind ``"dense"`` (any latent, flattened to L): ``dense1`` L -> hidden, ``dense2`` hidden -> L, reshaped back.
  Mixes across positions; use it on flat codes (encoder outputs) or small latents.

act is LeakyReLU(0.2) (x·cos(x) with archi letter ``c``). The first layer is glorot-uniform like DFL's
layers; the **last layer is zero-initialised** (weight and bias), so a fresh adapter is exactly the
identity and attaching it to a trained model changes nothing until it is trained (the usual zero-init
residual trick; the first layer still receives gradient once the last one moves off zero).
"""

from __future__ import annotations

import torch
from torch import nn

from engine.modules.layers import Act, conv2d, dense

__all__ = ["ADAPTER_KINDS", "Adapter"]

ADAPTER_KINDS = ("conv1x1", "dense")


class Adapter(nn.Module):
    """Residual adapter ``y = x + second(act(first(x)))``; output shape == input shape."""

    def __init__(self, in_shape: tuple[int, ...], kind: str = "conv1x1", hidden: int | None = None,
                 opts: str = "", *, device=None):
        super().__init__()
        if kind not in ADAPTER_KINDS:
            raise ValueError(f"adapter kind {kind!r}: valid kinds are {', '.join(ADAPTER_KINDS)}")
        self.kind = kind
        self.in_shape = tuple(int(s) for s in in_shape)
        self.act = Act(0.2, "c" in opts)
        if kind == "conv1x1":
            if len(self.in_shape) != 3:
                raise ValueError(f"conv1x1 adapter needs a (C, H, W) latent, got shape {self.in_shape}")
            ch = self.in_shape[0]
            hid = int(hidden or ch)
            self.conv1 = conv2d(ch, hid, 1, device=device)
            self.conv2 = conv2d(hid, ch, 1, device=device)
            last = self.conv2
        else:
            n = 1
            for s in self.in_shape:
                n *= s
            hid = int(hidden or min(n, 256))
            self.dense1 = dense(n, hid, device=device)
            self.dense2 = dense(hid, n, device=device)
            last = self.dense2
        self.hidden = hid
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "conv1x1":  # fixed at build time
            return x + self.conv2(self.act(self.conv1(x)))
        flat = torch.flatten(x, 1)
        return x + self.dense2(self.act(self.dense1(flat))).reshape(x.shape)
