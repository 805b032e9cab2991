"""The faces an evaluation runs on, converted to the model's geometry exactly like training targets.

A side (src or dst) is a faceset folder (DFL aligned DFLJPGs, plain images with `<name>_landmarks.npy`,
a faceset.pak / .tspak — whatever engine.faces.faceset reads) and optionally the names to use from it
(a checkpoint's held-out faces, engine.data.holdout). Each face becomes what the training pipeline's
target would be without augmentation (engine.data.sample: `image_to_model` — the face-type conversion
with DFL's get_transform_mat, or a resize — and the FULL_FACE mask: XSeg when present, else the landmark
hull): BGR float32 in [0, 1] at R×R of the model's face type, plus its landmarks in those pixels.

Faces that cannot be used are skipped and counted with the reason (undecodable file, a held-out name no
longer in the folder); a faceset narrower than the model's face type (e.g. f faces for a wf model) is
converted as DFL does (the crop reaches past the image, border replicated) and reported in `notes`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import attrs
import numpy as np

from engine.faces.face_sample import FaceSample
from engine.faces.faceset import FaceData, load_faceset
from engine.faces.facetypes import FaceType
from engine.faces.landmarks import get_transform_mat, transform_points
from engine.data.sample import SampleOptions, full_face_mask, image_to_model, mask_to_model
from engine.errors import DataError

__all__ = ["EvalSide", "load_side", "spread"]

log = logging.getLogger("torchsae.eval")


@attrs.frozen(kw_only=True)
class EvalSide:
    """One identity's evaluation faces at model geometry.

    images (N, R, R, 3) float32 BGR [0, 1]; masks (N, R, R, 1) float32 FULL_FACE masks; landmarks
    (N, 68, 2) float64 in R×R pixels; names (N,); folder; skipped [(name, reason)]; notes [str].
    """

    folder: str
    names: tuple[str, ...]
    images: np.ndarray = attrs.field(eq=False, repr=False)
    masks: np.ndarray = attrs.field(eq=False, repr=False)
    landmarks: np.ndarray = attrs.field(eq=False, repr=False)
    skipped: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.names)


def spread(n: int, k: int) -> list[int]:
    """k indices out of range(n) spread evenly (all of them when k <= 0 or k >= n), ascending."""
    if k <= 0 or k >= n:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, k)})


def _to_model(s: FaceSample, opts: SampleOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    face = FaceData(image=s.load_image(), landmarks=np.asarray(s.landmarks), face_type=s.face_type_enum,
                    xseg_mask=s.get_xseg_mask(), eyebrows_expand_mod=s.eyebrows_expand_mod, name=s.name)
    r = opts.resolution
    image = np.clip(image_to_model(face.image.astype(np.float32) / 255.0, face, opts), 0.0, 1.0)
    mask = np.clip(mask_to_model(full_face_mask(face), face, opts), 0.0, 1.0)
    lm = np.asarray(s.landmarks, dtype=np.float64)
    if face.face_type != opts.face_type:
        lm = transform_points(lm, get_transform_mat(lm, r, opts.face_type)).astype(np.float64)
    else:
        lm = lm * (r / face.image.shape[1])
    return image.astype(np.float32), mask.reshape(r, r, 1).astype(np.float32), lm


def load_side(folder: str | Path, *, resolution: int, face_type: str, names: tuple[str, ...] | None = None,
              max_faces: int = 0, plain_face_type: str = "wf", label: str = "faces") -> EvalSide:
    """The faces of `folder` (only `names` when given) at the model's `resolution` and `face_type`;
    `max_faces` > 0 keeps that many, spread evenly over the name-ordered list. DataError when the folder
    cannot be read at all; individual bad faces are skipped and listed."""
    folder = str(folder)
    try:
        samples = sorted(load_faceset(folder, plain_face_type), key=lambda s: s.name)
    except DataError as e:
        raise DataError(f"{label}: {e}") from None
    skipped: list[tuple[str, str]] = []
    if names is not None:
        by_name = {s.name: s for s in samples}
        missing = [n for n in names if n not in by_name]
        skipped.extend((n, "held-out face no longer in the folder") for n in missing)
        samples = [by_name[n] for n in sorted(names) if n in by_name]
    samples = [s for s in samples if s.face_type_enum != FaceType.MARK_ONLY] if samples else samples
    samples = [samples[i] for i in spread(len(samples), max_faces)]
    opts = SampleOptions(resolution=resolution, face_type=face_type, random_warp=False)
    images, masks, lms, kept = [], [], [], []
    narrower = 0
    for s in samples:
        try:
            img, m, lm = _to_model(s, opts)
        except (DataError, ValueError, ArithmeticError, np.linalg.LinAlgError) as e:
            skipped.append((s.name, f"{type(e).__name__}: {e}"))
            continue
        narrower += s.face_type_enum < opts.face_type
        images.append(img)
        masks.append(m)
        lms.append(lm)
        kept.append(s.name)
    notes = []
    if narrower:
        notes.append(f"{narrower} face(s) are narrower than the model's face type {opts.face_type.long_name}: their "
                     "crops reach past the aligned image (border replicated, as in DFL)")
    if skipped:
        log.warning("%s (%s): skipped %d face(s): %s%s", label, folder, len(skipped),
                    "; ".join(f"{n}: {why}" for n, why in skipped[:3]), " ..." if len(skipped) > 3 else "")
    r = resolution
    return EvalSide(folder=folder, names=tuple(kept),
                    images=np.stack(images) if images else np.zeros((0, r, r, 3), np.float32),
                    masks=np.stack(masks) if masks else np.zeros((0, r, r, 1), np.float32),
                    landmarks=np.stack(lms) if lms else np.zeros((0, 68, 2)),
                    skipped=tuple(skipped), notes=tuple(notes))
