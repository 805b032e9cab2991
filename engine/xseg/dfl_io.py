"""DFL's XSeg model folder (docs/dfl.md §7.2, §8) <-> TorchSAE XSeg checkpoints.

DFL's XSeg trainer writes three files into its model folder (model name forced to "XSeg"):

    XSeg_256.npy       weights: protocol-4 pickle {'conv01/conv/weight:0': TF-layout array, ...} (222 tensors)
    XSeg_256_opt.npy   RMSprop state: {'iters:0': int64, 'acc_XSeg/conv01/conv/weight_0:0': ..., ...}
    XSeg_data.dat      pickle {'iter', 'options': {'face_type': 'wf', 'batch_size': 4, 'pretrain': False},
                       'loss_history': [[loss], ...], 'sample_for_preview', 'choosed_gpu_indexes'}

`export_dfl_xseg` writes all three from a TorchSAE XSeg checkpoint (the optimizer state and loss history
when the checkpoint has its training state, zeros / empty otherwise, as DFL starts them), so DFL's
`XSeg) train.bat` continues it and DFL's `apply` / merger use it. `import_dfl_xseg` reads a folder back
into a single-file TorchSAE checkpoint (weights, the face type, DFL's iteration) with its recipe.
Reading is the restricted unpickler (engine.safe_pickle) throughout; the key map is the same one that
loads DFL's recorded XSeg weights in the golden test (engine.xseg.model).
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import torch

from engine import recipe as recipe_mod
from engine.faces.facetypes import FaceType
from engine.dfl.files import read_optimizer_file, write_part_file
from engine.dfl.keymap import dfl_to_torch_array, torch_to_dfl_array
from engine.errors import CheckpointError
from engine.fileio import write_atomic
from engine.modules.xseg import XSeg
from engine.optim import RMSprop, optimizer_from_dfl, optimizer_to_dfl
from engine.recipe.specs import Recipe
from engine.train import checkpoint as ck
from engine.xseg.model import XSEG_DATA_NAME, XSEG_WEIGHTS_NAME, dfl_xseg_arrays, load_xseg, xseg_recipe_of

__all__ = ["XSEG_OPT_NAME", "dfl_var_names", "load_dfl_optimizer", "export_dfl_xseg", "import_dfl_xseg"]

log = logging.getLogger("torchsae.xseg")

XSEG_OPT_NAME = "XSeg_256_opt.npy"


def dfl_var_names(net: XSeg) -> dict[str, torch.nn.Parameter]:
    """{DFL variable name 'XSeg/conv01/conv/weight:0': parameter} for every parameter of `net`."""
    return {"XSeg/" + k.replace(".", "/") + ":0": p for k, p in net.named_parameters()}


def _to_torch(_name: str, a: np.ndarray) -> np.ndarray:
    return dfl_to_torch_array(a)


def _to_tf(_name: str, a: np.ndarray) -> np.ndarray:
    return torch_to_dfl_array(a)


def load_dfl_optimizer(opt: RMSprop, net: XSeg, path: str | Path) -> bool:
    """Load DFL's XSeg_256_opt.npy beside the weights at `path` into `opt` (moments and counter); False when
    `path` is not a DFL folder or has no optimizer file."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    f = folder / XSEG_OPT_NAME
    if not (folder / XSEG_WEIGHTS_NAME).is_file() or not f.is_file():
        return False
    optimizer_from_dfl(opt, read_optimizer_file(f), dfl_var_names(net), _to_torch, source=str(f))
    return True


def _write_data_dat(path: Path, *, face_type: str, batch_size: int, pretrain: bool, it: int,
                    history: list[float]) -> None:
    data = {"iter": int(it), "options": {"face_type": face_type, "batch_size": int(batch_size), "pretrain": bool(pretrain)},
            "loss_history": [[float(v)] for v in history], "sample_for_preview": None, "choosed_gpu_indexes": None}
    write_atomic(path, pickle.dumps(data), durable=True)


def export_dfl_xseg(ckpt: str | Path, out: str | Path) -> dict:
    """Write a TorchSAE XSeg checkpoint (file, step folder or run folder) as DFL's XSeg model folder `out`."""
    payload = ck.load_model_payload(ckpt)
    r = xseg_recipe_of(payload["recipe_toml"], str(ckpt))
    if r.xseg.resolution != 256:
        raise CheckpointError(f"{ckpt}: an XSeg at resolution {r.xseg.resolution}; DFL's XSeg is fixed at 256 "
                              "(XSeg_256.npy), so DFL could not load it")
    net = XSeg(base_ch=r.xseg.base_ch, resolution=256)
    net.load_state_dict(payload["model"])
    state = ck.load_train_state(ckpt)
    opt = RMSprop(net.parameters(), lr=r.xseg.lr, lr_dropout=r.xseg.lr_dropout)
    history: list[float] = []
    if state is not None:
        opt.load_state_dict(state["opt"])
        history = [float(v) for v in state["history"].reshape(-1).tolist()]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_part_file(out / XSEG_WEIGHTS_NAME, dfl_xseg_arrays(net))
    write_part_file(out / XSEG_OPT_NAME, optimizer_to_dfl(opt, dfl_var_names(net), _to_tf))
    step = int(payload["step"])
    _write_data_dat(out / XSEG_DATA_NAME, face_type=r.xseg.face_type, batch_size=r.train.batch_size,
                    pretrain=r.xseg.pretrain, it=step, history=history)
    return {"folder": str(out), "iter": step, "face_type": r.xseg.face_type, "optimizer_state": state is not None,
            "files": [XSEG_WEIGHTS_NAME, XSEG_OPT_NAME, XSEG_DATA_NAME]}


def import_dfl_xseg(folder: str | Path, out: str | Path, *, face_type: str | None = None) -> tuple[Path, Recipe]:
    """DFL's XSeg folder -> a single-file TorchSAE XSeg checkpoint `out` (+ its recipe `out`.toml).

    The face type comes from XSeg_data.dat, else `face_type`; CheckpointError when neither says it."""
    folder = Path(folder)
    net, ft, step, _ = load_xseg(folder)
    if face_type is not None:
        ft = FaceType.parse(face_type, "--face-type")
    if ft is None:
        raise CheckpointError(f"{folder}: no {XSEG_DATA_NAME} says which face type this XSeg was trained for; "
                              "give --face-type (h, mf, f, wf, head)")
    text = (f'kind = "xseg"\n[xseg]\nface_type = "{ft.short_name}"\nresolution = {net.resolution}\n'
            f"base_ch = {net.base_ch}\n")
    r = recipe_mod.loads(text, source=f"<DFL XSeg {folder}>")
    path = ck.save_model_file(out, net, recipe_mod.dumps(r), step=step)
    return path, r
