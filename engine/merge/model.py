"""The merger's view of a face-swap model: a batch predictor plus what the merge needs to know about it
(resolution, face type, the recipe stored with it).

The model runs through engine.export.runtime (one adapter for every form): a TorchSAE checkpoint or DFL
model folder in torch, a .onnx/.dfm in ONNX Runtime (a DFM is NHWC with outputs face_mask, celeb,
celeb_mask by position, docs/dfl.md §9.2), or a ``--parts`` export. They all map (N, R, R, 3) BGR [0, 1] to
(celeb, celeb_mask, face_mask), i.e. DFL's predictor_func outputs (bgr, mask_src_dstm = learned-prd,
mask_dst_dstm = learned-dst) (docs/dfl.md §10.1).

Face type (which crop the model was trained on; the merge crops the frame the same way): the recipe
stored in a checkpoint, the ``torchsae.face_type`` metadata of an export, else None (the caller then takes
--face-type or the aligned faces' type).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from engine.export.runtime import open_model
from engine.faces.facetypes import FaceType
from engine.errors import TorchSAEError

__all__ = ["MergeModel", "open_merge_model"]

log = logging.getLogger("torchsae.merge")


@attrs.define
class MergeModel:
    """A loaded model: `predict(faces (N,R,R,3)) -> (face (N,R,R,3), prd_mask (N,R,R,1), dst_mask (N,R,R,1))`."""

    swapper: Any
    resolution: int
    face_type: FaceType | None
    recipe: Any | None
    description: str

    def predict(self, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r = self.resolution
        if faces.ndim != 4 or faces.shape[1:] != (r, r, 3):
            raise TorchSAEError(f"{self.description}: expected faces (N, {r}, {r}, 3), got {faces.shape}")
        celeb, celeb_mask, face_mask = self.swapper(np.ascontiguousarray(faces, dtype=np.float32))
        return (np.asarray(celeb, dtype=np.float32), np.asarray(celeb_mask, dtype=np.float32),
                np.asarray(face_mask, dtype=np.float32))

    __call__ = predict


def _export_face_type(swapper: Any) -> str | None:
    sess = getattr(swapper, "sess", None)
    if sess is not None:
        return sess.get_modelmeta().custom_metadata_map.get("torchsae.face_type")
    runner = getattr(swapper, "runner", None)
    if runner is not None:
        return (runner.manifest.get("metadata") or {}).get("face_type")
    return None


def open_merge_model(path: str | Path) -> MergeModel:
    """Open a checkpoint (file, step folder or run folder), a DFL model folder, a .onnx/.dfm file or a parts
    folder for merging. Raises TorchSAEError/CheckpointError naming the path when it cannot be used."""
    swapper = open_model(path)
    recipe = getattr(swapper, "recipe", None)
    ft_name = recipe.model.face_type if recipe is not None else _export_face_type(swapper)
    face_type = FaceType.parse(ft_name, f"{path}: face_type") if ft_name else None
    desc = getattr(swapper, "description", str(path))
    log.info("merge: model %s, resolution %d, face type %s", desc, swapper.resolution,
             face_type.long_name if face_type else "unknown")
    return MergeModel(swapper=swapper, resolution=int(swapper.resolution), face_type=face_type, recipe=recipe,
                      description=desc)
