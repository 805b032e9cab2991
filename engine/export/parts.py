"""Separate ONNX files per part (``torchsae export --parts``) and a runner that chains them.

The modular idea (Encoder_X + Decoder_Y): every parameter-holding node of the graph (encoder, inter,
adapter, decoder) becomes its own ONNX file, so parts can be recombined, shipped or benchmarked one by
one. A ``parts.json`` manifest records how they connect:

    {"format": "torchsae-parts", "version": 1, "resolution": R, "layout": "NCHW", "opset": 17, "fp16": false,
     "swap_code": "source" | "target",
     "identities": {"src": {"code": "inter", "decoder": "decoder_src"}, "dst": {...}},
     "swap": {"code": <node>, "decoder": <node>, "mask_code": <node>, "mask_decoder": <node>},
     "nodes": [{"name", "type", "file" (null for concat), "inputs": [names], "input_shapes": [[...]],
                "outputs": [names], "output_shapes": [[...]], "sources": [node names]}, ...]}

Names (all NCHW float32, batch dimension dynamic, shapes below without it):

| part | input | outputs |
|---|---|---|
| encoder ``E`` | ``face`` (3, R, R), BGR in [0, 1] | ``E`` flat code (L,) |
| inter/adapter ``I`` reading node ``S`` | ``S`` (its source's output shape) | ``I`` latent (C, r, r) (or flat for a dense adapter on a flat code) |
| decoder ``D`` | ``code`` (C, r, r) | ``image`` (3, R, R), ``mask`` (1, R, R) |
| concat ``K`` (no file) | its sources | channel concatenation in the listed order (LIAE: [B|AB], [AB|AB]) |

`PartsRunner` evaluates a manifest with ONNX Runtime: ``code(x, identity)``, ``decode(z, identity)``,
``translate(x, a, b)`` and ``swap(face)`` with `SwapModel`'s semantics (docs/dfl.md §2.4 "Inference").
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import attrs
import numpy as np
import torch

from engine.errors import TorchSAEError
from engine.export import verify
from engine.export.graphs import PartNet, to_half
from engine.export.onnx_export import (DEFAULT_OPSET, reference_kernels, simplify, trace_onnx,
                                       verification_faces)
from engine.recipe.graph_spec import IMAGE

log = logging.getLogger("torchsae.export")

__all__ = ["PartsReport", "export_parts", "PartsRunner", "MANIFEST"]

MANIFEST = "parts.json"


@attrs.frozen(kw_only=True)
class PartsReport:
    folder: Path
    manifest: dict
    checks: tuple  # (check, output, max abs error, rtol, atol)
    seconds: float


def _swap_nodes(model) -> dict[str, str]:
    ident = {i.name: (i.code, i.decoder) for i in model.plan.graph.identities}
    swap_code = ident["dst"][0] if model.swap_code == "source" else ident["src"][0]
    return {"code": swap_code, "decoder": ident["src"][1], "mask_code": ident["dst"][0],
            "mask_decoder": ident["dst"][1]}


def _torch_activations(model, face: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every latent node's output on `face` (N,3,R,R), evaluated in plan order from the parts themselves."""
    acts: dict[str, torch.Tensor] = {IMAGE: face}
    for n in model.plan.nodes:
        if n.type == "decoder":
            continue
        ins = [acts[s] for s in n.sources]
        acts[n.name] = torch.cat(ins, 1) if n.type == "concat" else getattr(model, n.name)(ins[0])
    return acts


def export_parts(model: torch.nn.Module, folder: str | Path, *, opset: int | None = None, fp16: bool = False,
                 simplify_graph: bool = True, verify_faces: str | Path | None = None,
                 metadata: dict | None = None) -> PartsReport:
    """Write one ONNX per part plus ``parts.json`` into `folder` (created; existing part files replaced),
    verify each part against torch on the real activations of verification faces, then verify that the
    chained parts reproduce ``model.swap`` (tolerances: `verify.TOLERANCES`). The model's train/eval mode
    is restored afterwards."""
    was_training = model.training
    try:
        return _export_parts(model, folder, opset=opset, fp16=fp16, simplify_graph=simplify_graph,
                             verify_faces=verify_faces, metadata=metadata)
    finally:
        model.train(was_training)


def _export_parts(model, folder, *, opset, fp16, simplify_graph, verify_faces, metadata) -> PartsReport:
    import onnx  # heavy (protobuf): loaded only when parts are exported

    t0 = time.perf_counter()
    opset = DEFAULT_OPSET if opset is None else int(opset)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = model.eval().float()
    R = int(model.resolution)
    tol = verify.TOLERANCES["fp16" if fp16 else "fp32"]
    faces, what = verification_faces(R, verify_faces)
    face_t = torch.from_numpy(np.ascontiguousarray(faces.transpose(0, 3, 1, 2)))
    with reference_kernels(), torch.no_grad():
        acts = _torch_activations(model, face_t)

    nodes, checks = [], []
    with tempfile.TemporaryDirectory(prefix=".parts-", dir=folder) as tmp:
        staged: list[tuple[Path, Path]] = []
        for n in model.plan.nodes:
            entry = {"name": n.name, "type": n.type, "sources": [s for s in n.sources]}
            if n.type == "concat":
                entry.update(file=None, inputs=list(n.sources), input_shapes=[list(s) for s in n.in_shapes],
                             outputs=[n.name], output_shapes=[list(n.out_shape)])
                nodes.append(entry)
                continue
            part = getattr(model, n.name)
            if n.type == "decoder":
                in_name, outs = "code", ("image", "mask")
                in_shape = tuple(n.in_shapes[0])
                out_shapes = [[3, R, R], [1, R, R]]
                # the code this decoder renders in the swap (or any code of its shape): real activations
                fed = [i.code for i in model.plan.graph.identities if i.decoder == n.name]
                x = acts[fed[0]]
            else:
                in_name = "face" if n.type == "encoder" else n.sources[0]
                outs = (n.name,)
                in_shape = (3, R, R) if n.type == "encoder" else tuple(n.in_shapes[0])
                out_shapes = [list(n.out_shape)]
                x = acts[IMAGE if n.type == "encoder" else n.sources[0]]
            net_ref = PartNet(part, n.type)
            net = PartNet(to_half(part, R), n.type) if fp16 else net_ref
            raw_path = Path(tmp) / f"{n.name}.raw.onnx"
            trace_onnx(net, x[:2].contiguous(), raw_path, input_name=in_name, output_names=outs, opset=opset)
            proto = onnx.load(str(raw_path))
            meta = {"format": "part", "part": n.name, "type": n.type, "resolution": R, "fp16": fp16, **(metadata or {})}
            for k, v in meta.items():
                e = proto.metadata_props.add()
                e.key, e.value = f"torchsae.{k}", str(v)
            verify.check_graph(proto, opset=opset, where=f"part {n.name}")
            if simplify_graph:
                proto, tool = simplify(proto, where=f"part {n.name}")
                if tool is not None:
                    verify.check_graph(proto, opset=opset, where=f"part {n.name} (simplified with {tool})")
            sess = verify.ort_session(proto)
            with reference_kernels(), torch.no_grad():
                ref = net_ref(x)
            ref = [ref] if torch.is_tensor(ref) else list(ref)
            got = sess.run(None, {in_name: x.numpy()})
            for name, g, r in zip(outs, got, ref):
                err = verify.assert_close(f"part {n.name}, ONNX Runtime vs torch, {what}", name, g, r.numpy(), **tol)
                checks.append((f"part {n.name}", name, err, tol["rtol"], tol["atol"]))
            fname = f"{n.name}.onnx"
            staged_path = Path(tmp) / fname
            onnx.save(proto, str(staged_path))
            staged.append((staged_path, folder / fname))
            entry.update(file=fname, inputs=[in_name], input_shapes=[list(in_shape)], outputs=list(outs),
                         output_shapes=out_shapes)
            nodes.append(entry)

        manifest = {
            "format": "torchsae-parts", "version": 1, "resolution": R, "layout": "NCHW", "opset": opset,
            "fp16": fp16, "swap_code": model.swap_code,
            "identities": {i.name: {"code": i.code, "decoder": i.decoder} for i in model.plan.graph.identities},
            "swap": _swap_nodes(model), "nodes": nodes, "metadata": {k: str(v) for k, v in (metadata or {}).items()},
        }
        (Path(tmp) / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        # chain check before anything is moved into place: the parts must reproduce the whole swap
        runner = PartsRunner(Path(tmp), _manifest=manifest, _files={dst.name: src for src, dst in staged})
        got = runner.swap(faces.transpose(0, 3, 1, 2))
        with reference_kernels(), torch.no_grad():
            ref = [t.numpy() for t in model.swap(face_t)]
        for name, g, r in zip(("celeb_face", "celeb_mask", "face_mask"), got, ref):
            err = verify.assert_close(f"chained parts vs SwapModel.swap, {what}", name, g, r, **tol)
            checks.append(("chained parts", name, err, tol["rtol"], tol["atol"]))
        for src, dst in staged:
            src.replace(dst)
        (Path(tmp) / MANIFEST).replace(folder / MANIFEST)
    secs = time.perf_counter() - t0
    log.info("exported %d parts to %s (opset %d%s) in %.1f s; each verified against torch and chained",
             len(staged), folder, opset, ", fp16" if fp16 else "", secs)
    return PartsReport(folder=folder, manifest=manifest, checks=tuple(checks), seconds=secs)


class PartsRunner:
    """Run exported parts (a folder with ``parts.json``) with ONNX Runtime, NCHW float32 numpy arrays."""

    def __init__(self, folder: str | Path, providers: list[str] | None = None, *, _manifest: dict | None = None,
                 _files: dict[str, Path] | None = None):
        folder = Path(folder)
        path = folder / MANIFEST
        if _manifest is None:
            if not path.is_file():
                raise TorchSAEError(f"{folder}: no {MANIFEST} (not a folder written by `torchsae export --parts`)")
            try:
                _manifest = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise TorchSAEError(f"{path}: not valid JSON ({e})") from None
            if _manifest.get("format") != "torchsae-parts" or _manifest.get("version") != 1:
                raise TorchSAEError(f"{path}: format {_manifest.get('format')!r} version {_manifest.get('version')!r}; "
                                    "expected 'torchsae-parts' version 1")
        self.manifest = _manifest
        self.resolution = int(_manifest["resolution"])
        self.nodes = {n["name"]: n for n in _manifest["nodes"]}
        self.sessions = {}
        for n in _manifest["nodes"]:
            if n["file"] is None:
                continue
            f = (_files or {}).get(n["file"], folder / n["file"])
            if not Path(f).is_file():
                raise TorchSAEError(f"{folder}: part file {n['file']} listed in {MANIFEST} is missing")
            self.sessions[n["name"]] = verify.ort_session(Path(f), providers)

    def run_part(self, name: str, x: np.ndarray) -> list[np.ndarray]:
        """One part on its input: a list of its outputs (decoders: [image, mask])."""
        n = self.nodes[name]
        return self.sessions[name].run(None, {n["inputs"][0]: np.ascontiguousarray(x, dtype=np.float32)})

    def _eval(self, name: str, face: np.ndarray, cache: dict[str, np.ndarray]) -> np.ndarray:
        if name in cache:
            return cache[name]
        n = self.nodes[name]
        if n["type"] == "decoder":
            raise TorchSAEError(f"node '{name}' is a decoder; it renders codes and has no latent output")
        if n["type"] == "encoder":
            y = self.run_part(name, face)[0]
        else:
            ins = [self._eval(s, face, cache) for s in n["sources"]]
            y = np.concatenate(ins, axis=1) if n["type"] == "concat" else self.run_part(name, ins[0])[0]
        cache[name] = y
        return y

    def code(self, face: np.ndarray, identity: str) -> np.ndarray:
        """``identity``'s code node on faces (N, 3, R, R)."""
        return self._eval(self.manifest["identities"][identity]["code"], face, {})

    def decode(self, z: np.ndarray, identity: str) -> tuple[np.ndarray, np.ndarray]:
        img, mask = self.run_part(self.manifest["identities"][identity]["decoder"], z)
        return img, mask

    def translate(self, face: np.ndarray, src_id: str, dst_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Faces of ``src_id`` rendered as ``dst_id`` (swap_code "source": the face's own code path;
        "target": the rendered identity's code path on the face), like SwapModel.translate."""
        who = src_id if self.manifest["swap_code"] == "source" else dst_id
        return self.decode(self.code(face, who), dst_id)

    def swap(self, face: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """dst faces (N,3,R,R) -> (celeb_face, celeb_mask, face_mask), as SwapModel.swap."""
        s = self.manifest["swap"]
        cache: dict[str, np.ndarray] = {}
        celeb, celeb_mask = self.run_part(s["decoder"], self._eval(s["code"], face, cache))
        face_mask = self.run_part(s["mask_decoder"], self._eval(s["mask_code"], face, cache))[1]
        return celeb, celeb_mask, face_mask
