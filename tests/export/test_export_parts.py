"""`export --parts`: one ONNX per part with named I/O; chaining the parts reproduces the whole swap."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from engine.errors import TorchSAEError
from engine.export import TOLERANCES, PartsRunner, export_parts
from engine.export.verify import ort_session

TOL = TOLERANCES["fp32"]


def _faces(n=3, seed=2):
    return np.random.default_rng(seed).uniform(0, 1, (n, 3, 64, 64)).astype(np.float32)


def _torch_swap(model, x):
    with torch.no_grad():
        return [t.numpy() for t in model.swap(torch.from_numpy(x))]


def _io(path):
    p = onnx.load(str(path))
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    return [(i.name, dims(i)) for i in p.graph.input], [(o.name, dims(o)) for o in p.graph.output]


def test_df_parts_chain_by_hand(tiny_df, tmp_path):
    _, model = tiny_df
    rep = export_parts(model, tmp_path / "df")
    man = json.loads((tmp_path / "df" / "parts.json").read_text())
    assert man == rep.manifest and man["swap_code"] == "source" and man["layout"] == "NCHW"
    assert [(n["name"], n["file"]) for n in man["nodes"]] == [
        ("encoder", "encoder.onnx"), ("inter", "inter.onnx"), ("decoder_src", "decoder_src.onnx"),
        ("decoder_dst", "decoder_dst.onnx")]
    # named inputs/outputs, symbolic batch, planned shapes: encoder 8e·(R/16)² = 1024; -d inter: lowest R/32, x2 = 4
    assert _io(tmp_path / "df" / "encoder.onnx") == ([("face", ["batch", 3, 64, 64])], [("encoder", ["batch", 1024])])
    assert _io(tmp_path / "df" / "inter.onnx") == ([("encoder", ["batch", 1024])], [("inter", ["batch", 32, 4, 4])])
    assert _io(tmp_path / "df" / "decoder_src.onnx") == (
        [("code", ["batch", 32, 4, 4])], [("image", ["batch", 3, 64, 64]), ("mask", ["batch", 1, 64, 64])])
    # chain: inter(encoder(x)) -> decoder_src = celeb face + mask; decoder_dst's mask = face mask (docs/dfl.md §2.4)
    s = {n: ort_session(tmp_path / "df" / f"{n}.onnx") for n in ("encoder", "inter", "decoder_src", "decoder_dst")}
    x = _faces()
    (code,) = s["inter"].run(None, {"encoder": s["encoder"].run(None, {"face": x})[0]})
    celeb, celeb_mask = s["decoder_src"].run(None, {"code": code})
    face_mask = s["decoder_dst"].run(None, {"code": code})[1]
    for got, want in zip((celeb, celeb_mask, face_mask), _torch_swap(model, x)):
        np.testing.assert_allclose(got, want, **TOL)
    assert {c[0] for c in rep.checks} >= {"part encoder", "part inter", "part decoder_src", "chained parts"}


def test_liae_parts_chain_by_hand(tiny_liae, tmp_path):
    _, model = tiny_liae
    rep = export_parts(model, tmp_path / "liae")
    files = [n["file"] for n in rep.manifest["nodes"]]
    assert files == ["encoder.onnx", "inter_AB.onnx", "inter_B.onnx", None, None, "decoder.onnx"]
    s = {n: ort_session(tmp_path / "liae" / f"{n}.onnx") for n in ("encoder", "inter_AB", "inter_B", "decoder")}
    x = _faces(seed=4)
    e = s["encoder"].run(None, {"face": x})[0]
    ab = s["inter_AB"].run(None, {"encoder": e})[0]
    b = s["inter_B"].run(None, {"encoder": e})[0]
    celeb, celeb_mask = s["decoder"].run(None, {"code": np.concatenate([ab, ab], 1)})  # swap code [AB|AB]
    face_mask = s["decoder"].run(None, {"code": np.concatenate([b, ab], 1)})[1]  # dst code [B|AB]
    for got, want in zip((celeb, celeb_mask, face_mask), _torch_swap(model, x)):
        np.testing.assert_allclose(got, want, **TOL)
    runner = PartsRunner(tmp_path / "liae")
    for got, want in zip(runner.swap(x), (celeb, celeb_mask, face_mask)):
        np.testing.assert_allclose(got, want, rtol=0, atol=0)




def test_explicit_graph_with_adapters(tmp_path, adapter_graph_toml):
    """The modular Encoder -> Adapter_X -> shared Decoder idea: parts of an explicit [graph] chain too."""
    from engine import graph, recipe

    r = recipe.loads(adapter_graph_toml, source="adapters.toml")
    torch.manual_seed(3)
    model = graph.build(r).eval()
    with torch.no_grad():  # adapters start as the identity (zero last layer): make them do something
        for name, p in model.named_parameters():
            if name.startswith("adapter_"):
                p.normal_(0, 0.05)
    rep = export_parts(model, tmp_path / "ad")
    assert [n["name"] for n in rep.manifest["nodes"]] == ["encoder", "inter", "adapter_src", "adapter_dst", "decoder"]
    assert _io(tmp_path / "ad" / "adapter_dst.onnx") == ([("inter", ["batch", 32, 4, 4])],
                                                         [("adapter_dst", ["batch", 32, 4, 4])])
    runner = PartsRunner(tmp_path / "ad")
    x = _faces(seed=6)
    for got, want in zip(runner.swap(x), _torch_swap(model, x)):
        np.testing.assert_allclose(got, want, **TOL)
    with torch.no_grad():
        want = [t.numpy() for t in model.reconstruct(torch.from_numpy(x), "src")]
    for got, w in zip(runner.translate(x, "src", "src"), want):
        np.testing.assert_allclose(got, w, **TOL)
    # the adapters matter: src's and dst's codes differ, so the swap differs from the src reconstruction
    assert np.abs(runner.swap(x)[0] - want[0]).max() > 1e-3


def test_runner_rejects_a_folder_without_manifest(tmp_path):
    with pytest.raises(TorchSAEError, match=r"no parts\.json \(not a folder written by `torchsae export --parts`\)"):
        PartsRunner(tmp_path)
