"""Fixtures for the export tests: tiny seeded models (recipes/tests/tiny_*.toml: res 64, ae 32, e 8, d 8,
dm 8) whose biases are spread so the outputs cover more of (0, 1) than a fresh model's ≈0.5 (a mixed-up
output or a layout bug then shows as a large error, not a 1e-3 one)."""

from __future__ import annotations

import lzma
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def spread(model: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def build_tiny(recipe_name: str, overrides: tuple[str, ...] = (), seed: int = 0):
    from engine import graph, recipe

    r = recipe.load(ROOT / "recipes" / "tests" / f"{recipe_name}.toml", overrides=overrides)
    torch.manual_seed(seed)
    return r, spread(graph.build(r), seed)


@pytest.fixture(scope="session")
def tiny_df():
    return build_tiny("tiny_df")


@pytest.fixture(scope="session")
def tiny_liae():
    return build_tiny("tiny_liae", seed=1)


def _torch_swap_nhwc(model, faces_nhwc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SwapModel.swap on NHWC numpy faces -> (celeb, celeb_mask, face_mask), NHWC numpy."""
    x = torch.from_numpy(np.ascontiguousarray(faces_nhwc.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        outs = model.swap(x)
    return tuple(o.permute(0, 2, 3, 1).numpy() for o in outs)


def _dfl_parts_folder(src: Path, dst: Path) -> Path:
    """Copy DFL part files (``*.npy`` or xz-compressed ``*.npy.xz``) into `dst`, decompressed."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.name.endswith(".npy.xz"):
            (dst / f.name[:-3]).write_bytes(lzma.decompress(f.read_bytes()))
        elif f.suffix == ".npy":
            shutil.copyfile(f, dst / f.name)
    return dst


@pytest.fixture(scope="session")
def torch_swap_nhwc():
    """SwapModel.swap on NHWC numpy faces -> (celeb, celeb_mask, face_mask), NHWC numpy."""
    return _torch_swap_nhwc


@pytest.fixture(scope="session")
def dfl_parts_folder():
    """copy(src, dst): DFL part files into a folder, xz-decompressed."""
    return _dfl_parts_folder


@pytest.fixture(scope="session")
def build_model():
    """build(recipe_name, overrides=(), seed=0) -> (Recipe, spread SwapModel)."""
    return build_tiny


_ADAPTER_GRAPH = """
[model]
archi = "df-ud"
resolution = 64
ae_dims = 32
e_dims = 8
d_dims = 8
d_mask_dims = 8

[graph]
swap_code = "source"

[[graph.nodes]]
name = "encoder"
type = "encoder"

[[graph.nodes]]
name = "inter"
type = "inter"
input = "encoder"

[[graph.nodes]]
name = "adapter_src"
type = "adapter"
input = "inter"
kind = "conv1x1"

[[graph.nodes]]
name = "adapter_dst"
type = "adapter"
input = "inter"
kind = "dense"
hidden = 16

[[graph.nodes]]
name = "decoder"
type = "decoder"

[graph.identities.src]
code = "adapter_src"
decoder = "decoder"

[graph.identities.dst]
code = "adapter_dst"
decoder = "decoder"
"""


@pytest.fixture(scope="session")
def adapter_graph_toml() -> str:
    """An explicit [graph]: shared encoder + inter, a conv1x1 adapter for src, a dense adapter for dst, one
    shared decoder (the modular Encoder -> Adapter_X -> Decoder idea)."""
    return _ADAPTER_GRAPH
