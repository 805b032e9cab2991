"""Export verification: ONNX Runtime (CPU) against torch, and ONNX graph hygiene checks.

Tolerances (one table, used by export and the tests):

| precision | rtol | atol | against |
|---|---|---|---|
| fp32 | 1e-3 | 1e-5 | torch eager fp32 (and simplified vs unsimplified) |
| fp16 | 1e-2 | 1e-2 | torch eager **fp32** (the model the user trained); ≤ 2e-2 ≈ 5/255 on [0, 1] images |
| fp16 simplified vs unsimplified | 1e-3 | 1e-3 | the same fp16 graph before simplification |

A value passes when ``|ort - ref| <= atol + rtol * |ref|`` (numpy.allclose's rule). A failure raises
TorchSAEError naming the check, the output, the max error and where it is.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from engine.errors import TorchSAEError, first_line

log = logging.getLogger("torchsae.export")

__all__ = ["TOLERANCES", "INT8_TOLERANCE", "ort_session", "run_session", "assert_close", "assert_close_int8",
           "check_graph", "op_counts",
           "DEFAULT_DOMAINS"]

TOLERANCES = {
    "fp32": {"rtol": 1e-3, "atol": 1e-5},
    "fp16": {"rtol": 1e-2, "atol": 1e-2},
    "fp16_simplified": {"rtol": 1e-3, "atol": 1e-3},
}
# int8 graphs are judged on faces (what their activation ranges are calibrated for) by the error's
# distribution: outputs are in [0, 1], so 0.01 mean is ~2.5/255 and 0.06 at the 99th percentile ~15/255.
# Measured on the quickstart model trained 1000 steps (res 64), 36 real dst faces not used for calibration:
# face mean 0.006 / p99 0.023, masks mean 0.0014 / p99 0.033.
INT8_TOLERANCE = {"mean": 0.01, "p99": 0.06}

DEFAULT_DOMAINS = ("", "ai.onnx")


def ort_session(model, providers: list[str] | None = None):
    """An onnxruntime InferenceSession on a path or an in-memory ModelProto/bytes (CPU by default)."""
    import onnxruntime as ort  # heavy: loaded only when an ONNX file is run

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: ORT warns about unused initializers on unsimplified graphs
    if not isinstance(model, (str, Path, bytes)):
        model = model.SerializeToString()
    elif isinstance(model, Path):
        model = str(model)
    return ort.InferenceSession(model, sess_options=opts, providers=providers or ["CPUExecutionProvider"])


def run_session(sess, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return sess.run(None, feeds)


def assert_close(what: str, name: str, got: np.ndarray, ref: np.ndarray, *, rtol: float, atol: float) -> float:
    """Raise TorchSAEError unless ``|got - ref| <= atol + rtol*|ref|`` everywhere; return the max abs error."""
    got = np.asarray(got)
    ref = np.asarray(ref)
    if got.shape != ref.shape:
        raise TorchSAEError(f"export verification failed ({what}): output '{name}' has shape {list(got.shape)}, "
                            f"torch gives {list(ref.shape)}")
    if not np.isfinite(ref).all():
        raise TorchSAEError(f"export verification failed ({what}): the torch reference of '{name}' has "
                            "non-finite values; the model's weights are broken")
    err = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    bad = ~(err <= atol + rtol * np.abs(ref.astype(np.float64)))  # also catches NaN in `got`
    max_err = float(np.nanmax(err)) if np.isfinite(err).any() else float("nan")
    if bad.any():
        idx = np.unravel_index(int(np.argmax(np.where(bad, np.nan_to_num(err, nan=np.inf), -1.0))), err.shape)
        raise TorchSAEError(
            f"export verification failed ({what}): output '{name}' differs from torch: max abs error "
            f"{max_err:.3g} (at index {tuple(int(i) for i in idx)}: got {float(got[idx]):.6g}, torch "
            f"{float(ref[idx]):.6g}); {int(bad.sum())} of {bad.size} values beyond atol {atol:g} + rtol {rtol:g}*|ref|")
    return max_err


def assert_close_int8(what: str, name: str, got: np.ndarray, ref: np.ndarray, *, mean: float, p99: float) -> float:
    """Raise TorchSAEError unless the mean and 99th-percentile absolute errors are within bounds (a quantized
    graph is not elementwise exact); return the max abs error."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        raise TorchSAEError(f"int8 verification failed ({what}): output '{name}' has shape {list(got.shape)}, "
                            f"torch gives {list(ref.shape)}")
    err = np.abs(got - ref)
    if not np.isfinite(err).all():
        raise TorchSAEError(f"int8 verification failed ({what}): output '{name}' has non-finite values")
    m, q = float(err.mean()), float(np.percentile(err, 99))
    if m > mean or q > p99:
        raise TorchSAEError(f"int8 verification failed ({what}): output '{name}' differs from fp32 torch by "
                            f"{m:.3g} on average and {q:.3g} at the 99th percentile (limits {mean:g}, {p99:g}); "
                            "calibrate on more representative faces (--verify-faces) or export fp32")
    return float(err.max())


def op_counts(proto) -> Counter:
    return Counter(n.op_type for n in proto.graph.node)


def check_graph(proto, *, opset: int, where: str) -> None:
    """onnx.checker (full, with shape inference), the opset, and no custom ops: every node and opset
    import must be in the default ONNX domain (export forces reference kernels; a custom op would make
    the file unusable in a stock ONNX Runtime such as DeepFaceLive's)."""
    import onnx  # heavy (protobuf): loaded only when an ONNX file is checked

    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise TorchSAEError(f"{where}: onnx.checker rejects the exported graph: {first_line(e)}") from None
    custom = sorted({f"{n.op_type} (domain '{n.domain}')" for n in proto.graph.node if n.domain not in DEFAULT_DOMAINS})
    if custom:
        raise TorchSAEError(f"{where}: the graph has custom-domain ops [{', '.join(custom)}]; only default-domain ONNX ops "
                            "are allowed (export must use the reference kernels)")
    imports = {o.domain: o.version for o in proto.opset_import}
    extra = sorted(d for d in imports if d not in DEFAULT_DOMAINS)
    if extra:
        raise TorchSAEError(f"{where}: the graph imports non-default opset domains {extra}")
    got = imports.get("", imports.get("ai.onnx"))
    if got != opset:
        raise TorchSAEError(f"{where}: the graph declares opset {got}, expected {opset}")
