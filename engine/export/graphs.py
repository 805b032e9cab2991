"""The torch modules that get traced into ONNX: the swap graph in two layouts, single parts, fp16 variants.

| wrapper | input | outputs (in graph order) |
|---|---|---|
| `OnnxSwap` (format "onnx") | ``face`` (N, 3, R, R) NCHW | ``celeb_face`` (N,3,R,R), ``celeb_mask`` (N,1,R,R), ``face_mask`` (N,1,R,R) |
| `DfmSwap` (format "dfm", docs/dfl.md §9.1) | ``in_face:0`` (N, R, R, 3) NHWC | ``out_face_mask:0`` (N,R,R,1), ``out_celeb_face:0`` (N,R,R,3), ``out_celeb_face_mask:0`` (N,R,R,1) |
| `PartNet` (``--parts``) | one part's input | encoder: flat code; inter/adapter: latent; decoder: image, mask |

All images are BGR in [0, 1]. The swap path is `SwapModel.swap` (docs/dfl.md §2.4 "Inference"): celeb_* = the
src decoder on the swap code, face_mask = the dst decoder's mask on dst's own code.

fp16 (`to_half`, DFL's "Export quantized?", docs/dfl.md §9.1): DFL keeps the I/O in float32, runs the convs in
float16 and keeps the Dense layers in float32 (the Encoder casts its input to fp16 and its flat output
back; Inter casts to fp16 after the reshape; the Decoder casts its outputs to fp32). `to_half` does the
same with hooks on a copy of the model, with one deliberate deviation: the encoder's flat code is cast to
fp32 *before* the `-u` pixel norm (DFL normalises in fp16), because ``mean(x²)`` over a whole code
overflows fp16 once an activation exceeds 256.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from engine.modules import Encoder

__all__ = ["OnnxSwap", "DfmSwap", "PartNet", "to_half", "ONNX_IO", "DFM_INPUT", "DFM_OUTPUTS"]

# format "onnx": names of the input and the outputs, in graph order
ONNX_IO = ("face", ("celeb_face", "celeb_mask", "face_mask"))
# format "dfm": DeepFaceLive's contract (docs/dfl.md §9.1/§9.2): names and order are read by position
DFM_INPUT = "in_face:0"
DFM_OUTPUTS = ("out_face_mask:0", "out_celeb_face:0", "out_celeb_face_mask:0")


class OnnxSwap(nn.Module):
    """face (N,3,R,R) -> (celeb_face, celeb_mask, face_mask), NCHW float32 (= SwapModel.swap)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, face: torch.Tensor):
        celeb, celeb_mask, face_mask = self.model.swap(face)
        return celeb.float(), celeb_mask.float(), face_mask.float()


class DfmSwap(nn.Module):
    """DFL's export_dfm graph (docs/dfl.md §9.1): in_face (N,R,R,3) NHWC -> NCHW -> inference path -> NHWC,
    outputs in DeepFaceLive's positional order (face_mask, celeb_face, celeb_face_mask)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, in_face: torch.Tensor):
        x = in_face.permute(0, 3, 1, 2)  # (N, R, R, 3) -> (N, 3, R, R)
        celeb, celeb_mask, face_mask = self.model.swap(x)
        nhwc = (0, 2, 3, 1)
        return (face_mask.float().permute(nhwc), celeb.float().permute(nhwc), celeb_mask.float().permute(nhwc))


class PartNet(nn.Module):
    """One part as a standalone network; decoders return (image, mask) in float32."""

    def __init__(self, part: nn.Module, kind: str):
        super().__init__()
        self.part = part
        self.kind = kind

    def forward(self, x: torch.Tensor):
        y = self.part(x)
        if self.kind == "decoder":
            img, mask = y
            return img.float(), mask.float()
        return y.float()


def _to_half_in(_module, args):
    return tuple(a.half() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _to_float_in(_module, args):
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _to_float_out(_module, _args, out):
    return out.float()


def _last_child_called(encoder: Encoder, probe: torch.Tensor) -> nn.Module:
    """The encoder's direct child that runs last (its output is what gets flattened)."""
    order: list[nn.Module] = []
    handles = [c.register_forward_hook(lambda m, a, o: order.append(m)) for c in encoder.children()]
    try:
        with torch.no_grad():
            encoder(probe)
    finally:
        for h in handles:
            h.remove()
    return order[-1]


def to_half(model: nn.Module, resolution: int) -> nn.Module:
    """A copy of `model` with DFL's quantized-export precision: Conv2d weights and compute in float16
    (inputs cast on entry), Linear layers in float32 (inputs cast to fp32), and each encoder's last stage
    output cast to fp32 so flatten + pixel_norm run in fp32. Callers cast the final outputs to fp32."""
    half = copy.deepcopy(model).float().eval()
    for enc in [m for m in half.modules() if isinstance(m, Encoder)]:
        probe = torch.zeros(1, enc.in_ch, resolution, resolution)
        _last_child_called(enc, probe).register_forward_hook(_to_float_out)
    for m in half.modules():
        if isinstance(m, nn.Conv2d):
            m.half()
            m.register_forward_pre_hook(_to_half_in)
        elif isinstance(m, nn.Linear):
            m.float()
            m.register_forward_pre_hook(_to_float_in)
    return half
