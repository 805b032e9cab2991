"""Export a SwapModel's inference graph to ONNX or DFM, simplify it, and verify it with ONNX Runtime.

    report = export_model(model, "out.dfm", fmt="dfm")        # DeepFaceLive's contract, opset 12
    report = export_model(model, "out.onnx", opset=17, fp16=True)
    report = export_model(model, "out.onnx", int8=True)         # int8 QDQ for CPU inference

Pipeline (each step fails loudly with a TorchSAEError):
1. Trace the wrapper (engine.export.graphs) with torch's TorchScript ONNX exporter (``dynamo=False``:
   the torch.export-based exporter of torch 2.13 needs onnxscript, which is not installed, and the legacy
   exporter is the one that emits plain opset-12 graphs like tf2onnx did). Dynamic batch, static H/W.
   Kernels are forced to their reference implementations during tracing (kernels.dispatch.force_reference,
   which overrides any request); the inference graph has no DSSIM/warp, and `check_graph` proves no custom
   op landed in the file.
2. ``onnx.checker`` (full), opset and domain checks.
3. Simplify with onnxsim; if onnxsim fails (or its own check fails) fall back to onnxslim with a
   warning and keep the unsimplified file beside the output (``<stem>.unsimplified.onnx``).
   Format "dfm" is then checked against DeepFaceLive's contract (engine.export.dfm.check_dfm).
4. Verify with ONNX Runtime (CPU): random inputs at batch 2, 1 and 3 (dynamic batch), and real-looking
   faces (a faces folder if given, else smooth random images), against torch eager fp32 within
   `verify.TOLERANCES`; the simplified and unsimplified graphs must agree too.
5. int8 (format "onnx" only): quantize the verified fp32 graph (engine.export.quantize: static QDQ,
   activation ranges calibrated on the verification faces) and verify the int8 graph against torch fp32
   within `verify.TOLERANCES["int8"]`.
6. Write atomically: nothing is left at the output path when any step fails.

Format "dfm" follows DFL's export_dfm (docs/dfl.md §9.1): opset 12, input ``in_face:0`` NHWC, outputs
``out_face_mask:0, out_celeb_face:0, out_celeb_face_mask:0`` NHWC in that order. Format "onnx" is NCHW
with input ``face`` and outputs ``celeb_face, celeb_mask, face_mask``. The file carries metadata
properties ``torchsae.*`` (format, layout, resolution, face type, archi, recipe, fp16, int8); DeepFaceLive
ignores them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
import warnings
from pathlib import Path

import attrs
import numpy as np
import torch

from engine.errors import TorchSAEError
from engine.export import verify
from engine.export.dfm import DFM_IR_VERSION, DFM_OPSET, check_dfm
from engine.export.faces import list_images, read_face, smooth_faces
from engine.export.graphs import DFM_INPUT, DFM_OUTPUTS, ONNX_IO, DfmSwap, OnnxSwap, to_half
from engine.export.quantize import quantize_int8
from kernels.dispatch import force_reference

log = logging.getLogger("torchsae.export")

__all__ = ["ExportReport", "export_model", "trace_onnx", "simplify", "reference_kernels", "verification_faces",
           "DFM_OPSET", "FORMATS"]

DEFAULT_OPSET = 17  # format "onnx" ([export].opset's default)
MAX_BYTES = 2**31 - 2**26  # protobuf's 2 GiB limit, less room for the graph itself
FORMATS = ("onnx", "dfm")
# opsets the TorchScript exporter of torch 2.13 writes (checked by a test)
MIN_OPSET, MAX_OPSET = 11, 20


@attrs.frozen(kw_only=True)
class ExportReport:
    """What an export produced and what it checked."""

    path: Path
    fmt: str
    opset: int
    fp16: bool
    resolution: int
    int8: bool = attrs.field(default=False, kw_only=True)
    simplified_with: str | None  # "onnxsim", "onnxslim" or None
    unsimplified_path: Path | None  # kept beside the output (onnxslim fallback, or keep_unsimplified)
    input_name: str
    output_names: tuple[str, ...]
    op_types: dict  # op type -> count in the written graph
    checks: tuple  # (check name, output name, max abs error, rtol, atol)
    seconds: float


@contextlib.contextmanager
def reference_kernels():
    """Every kernel op runs its reference for the duration, whatever was requested: no custom ops when tracing."""
    with force_reference("export"):
        yield


def trace_onnx(net: torch.nn.Module, example: torch.Tensor, path: Path, *, input_name: str,
               output_names: tuple[str, ...], opset: int) -> None:
    """Trace `net` on `example` to an ONNX file with a dynamic batch axis (dim 0 of the input and of every
    output) and static everything else. Raises TorchSAEError when torch cannot export."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise TorchSAEError(f"opset {opset}: torch's TorchScript ONNX exporter writes opsets "
                            f"{MIN_OPSET}..{MAX_OPSET}")
    dyn = {input_name: {0: "batch"}, **{n: {0: "batch"} for n in output_names}}
    net = net.eval()
    with reference_kernels(), torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.onnx.export(net, (example,), str(path), input_names=[input_name], output_names=list(output_names),
                              dynamic_axes=dyn, opset_version=opset, do_constant_folding=True, dynamo=False)
        except Exception as e:  # torch raises many types here (OnnxExporterError, RuntimeError, ...)
            raise TorchSAEError(f"torch could not export the graph to ONNX (opset {opset}): "
                                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    for w in caught:  # the legacy exporter's deprecation notices: not actionable for the user
        log.debug("torch.onnx: %s", str(w.message).splitlines()[0])


def simplify(proto, *, where: str):
    """(simplified proto, tool name) with onnxsim, falling back to onnxslim; (proto, None) if both fail."""
    try:
        import onnxsim  # heavy, and one of two simplifiers: whichever is importable is used

        simp, ok = onnxsim.simplify(proto)
        if not ok:
            raise RuntimeError("onnxsim's own output check failed")
        return simp, "onnxsim"
    except Exception as e:  # noqa: BLE001 - any simplifier failure triggers the documented fallback
        log.warning("%s: onnxsim failed (%s: %s); simplifying with onnxslim instead", where, type(e).__name__,
                    str(e).splitlines()[0] if str(e) else "")
    try:
        import onnxslim  # heavy, and the fallback simplifier when onnxsim is not importable

        with contextlib.redirect_stdout(io.StringIO()):  # onnxslim prints a summary table
            simp = onnxslim.slim(proto)
        return simp, "onnxslim"
    except Exception as e:  # noqa: BLE001
        log.warning("%s: onnxslim failed too (%s: %s); keeping the unsimplified graph", where,
                    type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    return proto, None


def verification_faces(resolution: int, faces_dir: str | Path | None, n: int = 4) -> tuple[np.ndarray, str]:
    """(N, R, R, 3) float32 BGR [0,1] faces for verification, and where they came from: up to `n`
    readable images from `faces_dir`, else `n` smooth random images."""
    if faces_dir is not None:
        faces = []
        for p in list_images(faces_dir):
            try:
                faces.append(read_face(p, resolution)[0])
            except TorchSAEError as e:
                log.info("verification: skipping %s", e)
            if len(faces) == n:
                break
        if faces:
            return np.stack(faces), f"{len(faces)} faces from {faces_dir}"
        log.warning("verification: no readable image in %s; using smooth random images", faces_dir)
    return smooth_faces(n, resolution, seed=1), f"{n} smooth random images"


def _input_sets(resolution: int, faces_dir, nhwc: bool) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    sets = [(f"random batch {b}", rng.uniform(0, 1, (b, resolution, resolution, 3)).astype(np.float32))
            for b in (2, 1, 3)]
    faces, what = verification_faces(resolution, faces_dir)
    sets.append((what, faces))
    if not nhwc:
        sets = [(w, np.ascontiguousarray(x.transpose(0, 3, 1, 2))) for w, x in sets]
    return sets


def _metadata(proto, meta: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"torchsae.{k}", str(v)


def export_model(model: torch.nn.Module, out: str | Path, *, fmt: str = "onnx", opset: int | None = None,
                 fp16: bool = False, simplify_graph: bool = True, keep_unsimplified: bool = False,
                 verify_faces: str | Path | None = None, metadata: dict | None = None, int8: bool = False
                 ) -> ExportReport:
    """Export `model` (a SwapModel: ``swap(face) -> (celeb_face, celeb_mask, face_mask)``, attribute
    ``resolution``) to `out` and verify it; see the module docstring. `opset` defaults to 17 for "onnx";
    "dfm" is always opset 12 (DeepFaceLive's contract) and asking for another is an error. The model is
    traced in eval mode; its train/eval mode is restored afterwards."""
    was_training = model.training
    try:
        return _export_model(model, out, fmt=fmt, opset=opset, fp16=fp16, simplify_graph=simplify_graph,
                             keep_unsimplified=keep_unsimplified, verify_faces=verify_faces, metadata=metadata,
                             int8=int8)
    finally:
        model.train(was_training)


def _export_model(model, out, *, fmt, opset, fp16, simplify_graph, keep_unsimplified, verify_faces, metadata,
                  int8=False):
    import onnx  # heavy (protobuf): loaded only when a model is exported

    t0 = time.perf_counter()
    out = Path(out)
    where = str(out)
    if fmt not in FORMATS:
        raise TorchSAEError(f"export format {fmt!r}: valid formats are {', '.join(FORMATS)}")
    if int8 and (fp16 or fmt != "onnx"):
        raise TorchSAEError(f"{where}: int8 is an fp32 graph quantized for CPU inference, format onnx only"
                            f"{' (not with --fp16)' if fp16 else ''}{' (DeepFaceLive DFM is opset 12)' if fmt != 'onnx' else ''}")
    if fmt == "dfm":
        if opset not in (DFM_OPSET, None):
            raise TorchSAEError(f"--opset {opset} with format dfm: DeepFaceLive's .dfm contract is opset "
                                f"{DFM_OPSET} (docs/dfl.md §9.1); use --format onnx for another opset")
        opset = DFM_OPSET
    elif opset is None:
        opset = DEFAULT_OPSET
    R = int(model.resolution)
    model = model.eval().float()
    # a single ONNX protobuf holds at most 2 GB (DeepFaceLive loads one file, so no external data)
    nbytes = sum(p.numel() * (2 if fp16 and p.dim() == 4 else 4) for p in model.parameters())
    if nbytes > MAX_BYTES:
        raise TorchSAEError(f"{where}: the model's weights take {nbytes / 2**30:.2f} GiB"
                            f"{' in fp16' if fp16 else ''}; an ONNX file holds at most 2 GiB"
                            f"{'; try --fp16' if not fp16 else ''}")
    net_ref = DfmSwap(model) if fmt == "dfm" else OnnxSwap(model)
    net = (DfmSwap if fmt == "dfm" else OnnxSwap)(to_half(model, R)) if fp16 else net_ref
    in_name, out_names = (DFM_INPUT, DFM_OUTPUTS) if fmt == "dfm" else ONNX_IO
    nhwc = fmt == "dfm"
    shape = (2, R, R, 3) if nhwc else (2, 3, R, R)
    example = torch.rand(shape, generator=torch.Generator().manual_seed(0))

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as tmp:
        raw_path = Path(tmp) / "raw.onnx"
        trace_onnx(net, example, raw_path, input_name=in_name, output_names=out_names, opset=opset)
        raw = onnx.load(str(raw_path))
        meta = {"format": fmt, "layout": "NHWC" if nhwc else "NCHW", "resolution": R, "fp16": fp16, "int8": int8,
                **(metadata or {})}
        _metadata(raw, meta)
        verify.check_graph(raw, opset=opset, where=where + " (unsimplified)")
        final, tool = raw, None
        if simplify_graph:
            final, tool = simplify(raw, where=where)
            if tool is not None:
                _metadata(final, meta)
                verify.check_graph(final, opset=opset, where=f"{where} (simplified with {tool})")
        if fmt == "dfm":
            # opset 12 needs IR 7; a newer IR would lock out the older ONNX Runtimes DeepFaceLive ships
            final.ir_version = min(final.ir_version, DFM_IR_VERSION)
            check_dfm(final, R, where=where)
        names_in = [i.name for i in final.graph.input if i.name not in {t.name for t in final.graph.initializer}]
        names_out = [o.name for o in final.graph.output]
        if names_in != [in_name] or names_out != list(out_names):
            raise TorchSAEError(f"{where}: exported graph has inputs {names_in} and outputs {names_out}; expected "
                                f"[{in_name}] and {list(out_names)}")

        checks = _verify(net_ref, final, raw if tool else None, R, verify_faces, nhwc, out_names, fp16)
        if int8:
            final = _int8(final, net_ref, R, verify_faces, in_name, out_names, where, checks)
            _metadata(final, meta)
            verify.check_graph(final, opset=opset, where=f"{where} (int8)")

        keep = tool is not None and (tool != "onnxsim" or keep_unsimplified)
        unsimplified_path = out.with_name(out.stem + ".unsimplified.onnx") if keep else None
        final_tmp = Path(tmp) / "final.onnx"
        onnx.save(final, str(final_tmp))
        if unsimplified_path is not None:
            raw_tmp = Path(tmp) / "unsimplified.onnx"
            onnx.save(raw, str(raw_tmp))
            raw_tmp.replace(unsimplified_path)
        final_tmp.replace(out)
    secs = time.perf_counter() - t0
    ops = dict(sorted(verify.op_counts(final).items()))
    log.info("exported %s (%s, opset %d%s, %s, %d nodes) in %.1f s; verified against torch on %d input sets",
             out, fmt, opset, ", fp16" if fp16 else ", int8" if int8 else "", f"simplified with {tool}" if tool else "not simplified",
             len(final.graph.node), secs, len({c[0] for c in checks if not c[0].startswith("simplified")}))
    return ExportReport(path=out, fmt=fmt, opset=opset, fp16=fp16, int8=int8, resolution=R, simplified_with=tool,
                        unsimplified_path=unsimplified_path, input_name=in_name, output_names=tuple(out_names),
                        op_types=ops, checks=tuple(checks), seconds=secs)


INT8_CALIBRATION_FACES = 32


def _int8(final, net_ref, R, faces_dir, in_name, out_names, where, checks: list):
    """Quantize the verified fp32 graph (format onnx, NCHW) and check it on faces it was not calibrated on
    (up to 32 calibration faces after the 4 verification ones when the folder has them; smooth random
    images otherwise, then calibration and check share them). Appends ("int8 <faces>", output, max abs
    error, mean limit, p99 limit) to `checks`."""
    faces, what = verification_faces(R, faces_dir, n=4 + INT8_CALIBRATION_FACES)
    check, calib = (faces[:4], faces[4:]) if len(faces) >= 8 else (faces, faces)
    check = np.ascontiguousarray(check.transpose(0, 3, 1, 2))
    q = quantize_int8(final, np.ascontiguousarray(calib.transpose(0, 3, 1, 2)), input_name=in_name, where=where)
    with reference_kernels(), torch.no_grad():
        ref = [t.numpy() for t in net_ref(torch.from_numpy(check))]
    got = verify.run_session(verify.ort_session(q), {in_name: check})
    tol = verify.INT8_TOLERANCE
    label = f"int8 {len(check)} of {what}" + (f", calibrated on the other {len(calib)}" if len(faces) >= 8 else "")
    for name, g, r in zip(out_names, got, ref):
        err = verify.assert_close_int8(f"ONNX Runtime int8 vs torch fp32, {label}", name, g, r, **tol)
        checks.append((label, name, err, tol["mean"], tol["p99"]))
    return q


def _verify(net_ref, final, raw, R, faces_dir, nhwc, out_names, fp16) -> list[tuple]:
    """Compare ORT(final) with torch fp32 eager, and ORT(final) with ORT(raw) when it was simplified."""
    tol = verify.TOLERANCES["fp16" if fp16 else "fp32"]
    tol_simp = verify.TOLERANCES["fp16_simplified" if fp16 else "fp32"]
    sess = verify.ort_session(final)
    sess_raw = verify.ort_session(raw) if raw is not None else None
    in_name = sess.get_inputs()[0].name
    checks = []
    for what, x in _input_sets(R, faces_dir, nhwc):
        with reference_kernels(), torch.no_grad():
            ref = [t.numpy() for t in net_ref(torch.from_numpy(x))]
        got = verify.run_session(sess, {in_name: x})
        for name, g, r in zip(out_names, got, ref):
            err = verify.assert_close(f"ONNX Runtime vs torch, {what}", name, g, r, **tol)
            checks.append((what, name, err, tol["rtol"], tol["atol"]))
        if sess_raw is not None:
            got_raw = verify.run_session(sess_raw, {in_name: x})
            for name, g, r in zip(out_names, got, got_raw):
                err = verify.assert_close(f"simplified vs unsimplified, {what}", name, g, r, **tol_simp)
                checks.append((f"simplified vs unsimplified, {what}", name, err, tol_simp["rtol"], tol_simp["atol"]))
    return checks
