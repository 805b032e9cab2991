"""Inference speed of an exported model: ONNX Runtime (CPU) on the .dfm vs torch eager and torch.compile.

Figures (group "swap df-ud res<R> b<B>", items = B faces per call, so the harness prints faces/s; the
per-face latency is median / B): the full inference path of docs/dfl.md §2.4 (dst face -> celeb face, celeb
mask, face mask) of a df-ud model with DFL's default dims 256/64/64/22 at R = 128 and 256, batch 1
(DeepFaceLive's live use) and 8 (batch swapping).

Providers:
  reference       torch eager, SwapModel.swap (NCHW), fp32, torch's default threads
  torch-compiled  torch.compile(SwapModel.swap wrapper, dynamic=False) (compiled in setup, not timed)
  ort-cpu         onnxruntime CPUExecutionProvider on the verified .dfm (NHWC in/out, graph
                  optimisations at their default, ORT_ENABLE_ALL)
  ort-cpu-int8    the same runtime on the int8 export (format onnx, static QDQ calibrated on smooth
                  random faces, engine.export.quantize): int8 convolutions (VNNI/AMX-INT8), outputs
                  within the int8 tolerance of fp32, not bit-close

Weights are DFL's initialisation (speed does not depend on their values). The .dfm comes from
engine.export.export_model, i.e. it is simplified and verified against torch before it is timed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

RESOLUTIONS = [128, 256]
BATCHES = [1, 8]
PROVIDERS = ["reference", "torch-compiled", "ort-cpu", "ort-cpu-int8"]
_cache: dict = {}


def _model(res: int):
    if res not in _cache:
        from pathlib import Path

        from engine import graph, recipe

        root = Path(__file__).resolve().parents[2]
        r = recipe.load(root / "recipes" / "df128.toml", overrides=[f"model.resolution={res}"])
        assert (r.model.archi, r.model.ae_dims, r.model.e_dims, r.model.d_dims, r.model.d_mask_dims) == \
            ("df-ud", 256, 64, 64, 22)
        torch.manual_seed(0)
        _cache[res] = {"model": graph.build(r).eval()}
    return _cache[res]


def _dfm(res: int, tmp_path_factory):
    entry = _model(res)
    if "dfm" not in entry:
        from engine.export import export_model

        out = tmp_path_factory.mktemp(f"bench{res}") / f"dfud{res}.dfm"
        entry["dfm"] = export_model(entry["model"], out, fmt="dfm").path
    return entry["dfm"]


def _int8(res: int, tmp_path_factory):
    entry = _model(res)
    if "int8" not in entry:
        from engine.export import export_model

        out = tmp_path_factory.mktemp(f"bench{res}q") / f"dfud{res}_int8.onnx"
        entry["int8"] = export_model(entry["model"], out, fmt="onnx", int8=True).path
    return entry["int8"]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("res", RESOLUTIONS)
def test_swap_inference(benchmark, tag, tmp_path_factory, res, batch, provider):
    tag(f"swap df-ud res{res} b{batch}", provider, items=batch, torch_threads=torch.get_num_threads())
    model = _model(res)["model"]
    faces = np.random.default_rng(res + batch).uniform(0, 1, (batch, res, res, 3)).astype(np.float32)
    if provider == "ort-cpu":
        from engine.export.verify import ort_session

        sess = ort_session(_dfm(res, tmp_path_factory))
        feeds = {"in_face:0": faces}
        sess.run(None, feeds)
        benchmark(sess.run, None, feeds)
        return
    if provider == "ort-cpu-int8":
        from engine.export.verify import ort_session

        sess = ort_session(_int8(res, tmp_path_factory))
        feeds = {"face": np.ascontiguousarray(faces.transpose(0, 3, 1, 2))}
        sess.run(None, feeds)
        benchmark(sess.run, None, feeds)
        return
    x = torch.from_numpy(np.ascontiguousarray(faces.transpose(0, 3, 1, 2)))
    if provider == "reference":
        fn = model.swap
    else:
        from engine.export.graphs import OnnxSwap

        key = ("compiled", res)
        if key not in _cache:
            _cache[key] = torch.compile(OnnxSwap(model), dynamic=False)
        fn = _cache[key]

    def run():
        with torch.no_grad():
            return fn(x)

    run()  # compile / warm up outside the timing
    benchmark(run)
