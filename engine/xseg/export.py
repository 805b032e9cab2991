"""XSeg to ONNX in DFL's contract, verified against torch in ONNX Runtime.

    report = export_xseg_onnx("runs/xseg", "xseg.onnx")     # any XSeg model engine.xseg.model loads

DFL's `XSegModel.export_dfm` (docs/dfl.md §7.3) writes `XSeg_model.onnx`: input ``in_face:0`` (N, R, R, 3) NHWC
BGR in [0, 1], output ``out_mask:0`` (N, R, R, 1) = sigmoid(logits), opset 13, dynamic batch. The same
here, plus metadata ``torchsae.face_type`` / ``resolution`` / ``base_ch`` (ignored by other readers; the
merger and `xseg apply` read the face type from it). Steps reuse engine.export: trace (TorchScript
exporter), `onnx.checker` and default-domain-only ops, onnxsim, then ONNX Runtime against torch eager fp32
on random batches of 1, 2 and 3 and on smooth face-like images, within engine.export.verify.TOLERANCES
["fp32"] (rtol 1e-3, atol 1e-5); the file is written atomically only when every check passed.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from pathlib import Path

import attrs
import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import TorchSAEError
from engine.export import verify
from engine.export.faces import smooth_faces
from engine.export.onnx_export import reference_kernels, simplify, trace_onnx
from engine.modules.xseg import BlurPool, XSeg
from engine.xseg.model import load_xseg

__all__ = ["XSEG_ONNX_INPUT", "XSEG_ONNX_OUTPUT", "XSEG_OPSET", "XSegOnnx", "XSegExportReport", "export_xseg_onnx"]

log = logging.getLogger("torchsae.xseg")

XSEG_ONNX_INPUT, XSEG_ONNX_OUTPUT, XSEG_OPSET = "in_face:0", "out_mask:0", 13


class _ExportBlurPool(torch.nn.Module):
    """BlurPool with its depthwise kernel materialised for a known channel count: the TorchScript exporter
    cannot export a convolution whose kernel is expanded to the input's (dynamic) channel count."""

    def __init__(self, bp: BlurPool, channels: int):
        super().__init__()
        self.register_buffer("kernel", bp.kernel.expand(channels, 1, -1, -1).clone(), persistent=False)
        self.pad, self.stride, self.channels = bp.pad, bp.stride, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.pad
        return F.conv2d(F.pad(x, (lo, hi, lo, hi)), self.kernel, stride=self.stride, groups=self.channels)


class XSegOnnx(torch.nn.Module):
    """NHWC BGR faces -> NHWC sigmoid mask (DFL's export graph around the network). Works on a copy of `net`
    whose BlurPools carry fixed-channel kernels (same numbers)."""

    def __init__(self, net: XSeg):
        super().__init__()
        net = copy.deepcopy(net)
        c = net.base_ch
        for name, ch in (("bp0", c), ("bp1", 2 * c), ("bp2", 4 * c), ("bp3", 8 * c), ("bp4", 8 * c), ("bp5", 8 * c)):
            setattr(net, name, _ExportBlurPool(getattr(net, name), ch))
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 3, 1, 2))[1].permute(0, 2, 3, 1)


@attrs.frozen(kw_only=True)
class XSegExportReport:
    path: Path
    opset: int
    resolution: int
    face_type: str | None
    simplified_with: str | None
    checks: tuple  # (input set, max abs error, rtol, atol)
    seconds: float


def export_xseg_onnx(model: str | Path, out: str | Path, *, opset: int = XSEG_OPSET, simplify_graph: bool = True
                     ) -> XSegExportReport:
    """Export an XSeg model (TorchSAE checkpoint, DFL folder) to ONNX and verify it (module doc)."""
    import onnx  # heavy (protobuf): only when exporting, as engine.export does

    t0 = time.perf_counter()
    net, ft, _step, _r = load_xseg(model)
    net = net.float().eval()
    r = net.resolution
    wrapper = XSegOnnx(net).eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand((2, r, r, 3), generator=torch.Generator().manual_seed(0))
    meta = {"torchsae.format": "xseg", "torchsae.layout": "NHWC", "torchsae.resolution": str(r),
            "torchsae.base_ch": str(net.base_ch)}
    if ft is not None:
        meta["torchsae.face_type"] = ft.long_name
    with tempfile.TemporaryDirectory(prefix=".xseg-export-", dir=out.parent) as tmp:
        raw_path = Path(tmp) / "raw.onnx"
        trace_onnx(wrapper, example, raw_path, input_name=XSEG_ONNX_INPUT, output_names=(XSEG_ONNX_OUTPUT,),
                   opset=opset)
        proto = onnx.load(str(raw_path))
        verify.check_graph(proto, opset=opset, where=f"{out} (unsimplified)")
        tool = None
        if simplify_graph:
            proto, tool = simplify(proto, where=str(out))
            verify.check_graph(proto, opset=opset, where=f"{out} (simplified)")
        del proto.metadata_props[:]
        for k, v in meta.items():
            e = proto.metadata_props.add()
            e.key, e.value = k, v
        sess = verify.ort_session(proto)
        rng = np.random.default_rng(0)
        sets = [(f"random batch {b}", rng.uniform(0, 1, (b, r, r, 3)).astype(np.float32)) for b in (1, 2, 3)]
        sets.append(("4 smooth face-like images", smooth_faces(4, r, seed=1)))
        tol = verify.TOLERANCES["fp32"]
        checks = []
        for what, x in sets:
            with reference_kernels(), torch.no_grad():
                ref = wrapper(torch.from_numpy(x)).numpy()
            got = verify.run_session(sess, {XSEG_ONNX_INPUT: x})[0]
            err = verify.assert_close(f"ONNX Runtime vs torch, {what}", XSEG_ONNX_OUTPUT, got, ref, **tol)
            checks.append((what, err, tol["rtol"], tol["atol"]))
        final = Path(tmp) / "final.onnx"
        onnx.save(proto, str(final))
        if not final.is_file():
            raise TorchSAEError(f"{out}: the ONNX file was not written")
        final.replace(out)
    secs = time.perf_counter() - t0
    log.info("exported %s (XSeg res %d, opset %d, %s) in %.1f s; verified on %d input sets", out, r, opset,
             f"simplified with {tool}" if tool else "not simplified", secs, len(checks))
    return XSegExportReport(path=out, opset=opset, resolution=r, face_type=ft.long_name if ft else None,
                            simplified_with=tool, checks=tuple(checks), seconds=secs)
