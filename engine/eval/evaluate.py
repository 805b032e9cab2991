"""One evaluation: held-out src and dst faces + a model -> every metric, per face and summarised.

    ev = Evaluator(src_side, dst_side, resolution=R, face_type="wf")   # faces at the model's geometry
    result = ev.evaluate(model)        # engine.eval.models.EvalModel -> EvalResult
    result.metrics["identity_retrieval"], result.per_face[0], result.samples

The real faces are analysed once per Evaluator (dlib landmarks, embeddings, detection; the src and dst
centroids; the calibration of engine.eval.metrics.real_calibration) and reused for every model and every
training-time evaluation, so evaluating another checkpoint costs only its swaps and reconstructions.

What each model entry holds (EvalResult.metrics; metrics are null, with the reason in `unavailable`, when
they cannot be computed): `n_faces` (dst faces swapped), `n_src`, the identity metrics, the real-face
calibration (`real_identity_retrieval`, ...), `landmark_nme` (+ eyes, mouth), `yaw_error_deg`,
`pitch_error_deg`, `face_found_rate` and `no_face_found` (the CNN detector on the swaps),
`real_face_found_rate`, reconstruction `recon_dssim_{src,dst}`, `psnr_{src,dst}`, `mse_{src,dst}`,
`skipped` ({reason: count}) and `warnings` (too few faces, non-finite output, faces seen in training).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import attrs
import numpy as np

from engine.errors import TorchSAEError
from engine.eval import metrics as M
from engine.eval.analyzer import FaceAnalyzer
from engine.eval.faces import EvalSide, spread
from engine.eval.models import EvalModel

__all__ = ["Evaluator", "EvalResult", "RealFaces", "MIN_FACES", "KEY_METRICS"]

log = logging.getLogger("torchsae.eval")

MIN_FACES = 5  # fewer held-out faces per side than this: metrics are reported, with a warning that they are noisy
# What scripts can count on in every model entry of eval.json (the list), in report order.
KEY_METRICS = ("identity_retrieval", "identity_margin", "landmark_nme", "yaw_error_deg", "recon_dssim_src",
               "recon_dssim_dst", "psnr_src", "psnr_dst", "n_faces", "real_identity_retrieval")


@attrs.frozen
class RealFaces:
    """dlib's view of one side's real faces: rects (N, 4) and landmarks (N, 68, 2) in analysis pixels,
    embeddings (N, 128), found (N,) bool (CNN detector), rect_from {how: count}."""

    rects: np.ndarray = attrs.field(eq=False)
    landmarks: np.ndarray = attrs.field(eq=False)
    embeddings: np.ndarray = attrs.field(eq=False)
    found: np.ndarray = attrs.field(eq=False)
    rect_from: dict = attrs.field(factory=dict)


@attrs.define
class EvalResult:
    """metrics: the model's entry of eval.json (flat, JSON-able); per_face: one dict per swapped dst face;
    samples: images for the report grid ({"dst", "swap", "src", "recon_src", "recon_dst"} -> (k, R, R, 3))
    with `sample_scores` (one dict per row)."""

    metrics: dict[str, Any]
    per_face: list[dict[str, Any]]
    samples: dict[str, np.ndarray]
    sample_scores: list[dict[str, Any]]


IDENTITY_KEYS = ("identity_retrieval", "identity_nearest_src", "identity_margin", "identity_dist_src",
                 "identity_dist_dst", "identity_cos_src", "identity_dist_own_dst")


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


class Evaluator:
    """Held-out faces of both identities at one model geometry (resolution R, face type) and their real-face
    analysis; `evaluate(model)` scores a model of that geometry. n_samples: rows of the report grid."""

    def __init__(self, src: EvalSide, dst: EvalSide, *, resolution: int, face_type: str, detect: bool = True,
                 n_samples: int = 6, analyzer: FaceAnalyzer | None = None, kernels: str = "auto"):
        self.src, self.dst = src, dst
        self.resolution, self.face_type = int(resolution), face_type
        self.detect = detect
        self.n_samples = n_samples
        self.analyzer = analyzer or FaceAnalyzer()
        self.kernels = kernels
        self.side = self.analyzer.side(self.resolution)
        self._real: dict[str, RealFaces] | None = None
        self._calibration: dict[str, Any] | None = None

    # ------------------------------------------------------------------ real faces (once)
    def _analyse_real(self, side: EvalSide, detect: bool) -> RealFaces:
        a = self.analyzer
        scale = self.side / self.resolution
        rgbs = [a.prepare(img) for img in side.images]
        rects, how = [], {}
        for rgb, lm in zip(rgbs, side.landmarks):
            rect, why = a.face_rect(rgb, lm * scale, self.face_type)
            rects.append(rect)
            how[why] = how.get(why, 0) + 1
        res = a.analyse(rgbs, rects, detect=detect)
        n = len(res)
        return RealFaces(rects=np.array(rects).reshape(n, 4),
                         landmarks=np.array([r.landmarks for r in res]).reshape(n, 68, 2),
                         embeddings=np.array([r.embedding for r in res]).reshape(n, 128),
                         found=np.array([bool(r.detected) for r in res], dtype=bool), rect_from=how)

    def real(self) -> dict[str, RealFaces]:
        """The real faces' analysis per side ("src", "dst"), computed on first use."""
        if self._real is None:
            t0 = time.perf_counter()
            # detection only on the real dst faces: the swaps are dst faces, so they are the baseline to compare with
            self._real = {"src": self._analyse_real(self.src, False), "dst": self._analyse_real(self.dst, self.detect)}
            self._calibration = M.real_calibration(self._real["src"].embeddings, self._real["dst"].embeddings)
            found = self._real["dst"].found
            self._calibration["real_face_found_rate"] = float(found.mean()) if self.detect and found.size else None
            # where the shape predictor's rectangles came from (engine.eval.analyzer: hog, landmarks, face_type)
            self._calibration["face_rect_from"] = {k: dict(v.rect_from) for k, v in self._real.items()}
            log.info("eval: analysed %d src + %d dst real faces in %.1f s (real identity retrieval %s)", len(self.src),
                     len(self.dst), time.perf_counter() - t0, self._calibration["real_identity_retrieval"])
        return self._real

    def calibration(self) -> dict[str, Any]:
        self.real()
        return dict(self._calibration)

    # ------------------------------------------------------------------ one model
    def _infer(self, model: EvalModel, name: str, call, n: int, warnings: list[str]) -> np.ndarray | None:
        """Run one of the model's inference calls and check its output: TorchSAEError naming the model when it
        fails or returns the wrong shape; non-finite pixels are zeroed and reported; values clipped to [0, 1]."""
        try:
            out = call()
        except TorchSAEError:
            raise
        except Exception as e:  # noqa: BLE001 - ONNX Runtime / torch raise many types; a broken model is input
            first = (str(e).splitlines() or [""])[0][:300]
            raise TorchSAEError(f"{model.label}: {name} failed ({type(e).__name__}: {first})") from None
        if out is None:
            return None
        r = self.resolution
        if out.shape != (n, r, r, 3):
            raise TorchSAEError(f"{model.label}: {name} returned shape {tuple(out.shape)}, expected {(n, r, r, 3)} "
                                f"(the model's resolution is not {r}?)")
        bad = ~np.isfinite(out).all(axis=(1, 2, 3))
        if bad.any():
            warnings.append(f"{name}: {int(bad.sum())} output(s) had non-finite pixels (set to 0 for scoring)")
            out = np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0)
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    def evaluate(self, model: EvalModel) -> EvalResult:
        t0 = time.perf_counter()
        real = self.real()
        m: dict[str, Any] = {"resolution": self.resolution, "face_type": self.face_type, "n_faces": len(self.dst),
                             "n_src": len(self.src)}
        warnings: list[str] = []
        unavailable: dict[str, str] = {}
        skipped: dict[str, int] = {}
        for side in (self.src, self.dst):
            for _name, why in side.skipped:
                key = "held-out face missing" if why.startswith("held-out face") else "unreadable face"
                skipped[key] = skipped.get(key, 0) + 1
            warnings.extend(side.notes)
        for label, side in (("src", self.src), ("dst", self.dst)):
            if 0 < len(side) < MIN_FACES:
                warnings.append(f"only {len(side)} {label} face(s): the metrics are noisy (at least {MIN_FACES} "
                                f"per side recommended; raise [data].eval_fraction or pass more --faces)")
        m.update(self.calibration())

        per_face: list[dict[str, Any]] = [{"name": n} for n in self.dst.names]
        swap = None
        if len(self.dst) == 0:
            unavailable["swap"] = "no dst faces to swap"
        else:
            swap = self._infer(model, "swap", lambda: model.swap(self.dst.images), len(self.dst), warnings)
        if swap is not None:
            self._swap_metrics(swap, real, m, per_face, unavailable)
        else:
            for k in IDENTITY_KEYS + ("landmark_nme", "landmark_nme_eyes", "landmark_nme_mouth", "yaw_error_deg",
                                      "pitch_error_deg", "face_found_rate", "no_face_found"):
                m[k] = None
        if m.get("no_face_found"):
            skipped["no face found in the swap (kept in the metrics)"] = int(m["no_face_found"])
        recons = {}
        for ident, side in (("src", self.src), ("dst", self.dst)):
            recon = None
            if len(side) == 0:
                unavailable[f"recon_{ident}"] = f"no {ident} faces"
            else:
                recon = self._infer(model, f"recon_{ident}", lambda s=side, i=ident: model.reconstruct(s.images, i),
                                    len(side), warnings)
                if recon is None:
                    unavailable[f"recon_{ident}"] = model.no_recon.get(ident, "not available for this model")
            recons[ident] = recon
            if recon is None:
                m[f"recon_dssim_{ident}"] = m[f"psnr_{ident}"] = m[f"mse_{ident}"] = None
                continue
            rm = M.recon_metrics(recon, side.images, side.masks, kernels=self.kernels)
            m[f"recon_dssim_{ident}"] = M.mean_or_none(rm["dssim"])
            m[f"psnr_{ident}"] = M.mean_or_none(rm["psnr"])
            m[f"mse_{ident}"] = M.mean_or_none(rm["mse"])
            if ident == "dst":
                for pf, d in zip(per_face, rm["dssim"]):
                    pf["recon_dssim"] = _finite_or_none(d)
        m["skipped"] = skipped
        m["unavailable"] = unavailable
        m["warnings"] = warnings
        m["eval_seconds"] = round(time.perf_counter() - t0, 3)
        samples, scores = self._samples(swap, recons, per_face)
        return EvalResult(metrics=m, per_face=per_face, samples=samples, sample_scores=scores)

    def _swap_metrics(self, swap: np.ndarray, real: dict[str, RealFaces], m: dict[str, Any], per_face: list[dict],
                      unavailable: dict[str, str]) -> None:
        a = self.analyzer
        rd = real["dst"]
        rgbs = [a.prepare(img) for img in swap]
        res = a.analyse(rgbs, list(rd.rects), detect=self.detect)
        emb = np.array([r.embedding for r in res]).reshape(len(res), 128)
        lms = np.array([r.landmarks for r in res]).reshape(len(res), 68, 2)
        if len(real["src"].embeddings):
            summary, pf = M.identity_metrics(emb, real["src"].embeddings.mean(0), rd.embeddings.mean(0), rd.embeddings)
            m.update(summary)
            for i, f in enumerate(per_face):
                f.update(d_src=float(pf["d_src"][i]), d_dst=float(pf["d_dst"][i]), d_own_dst=float(pf["d_own_dst"][i]),
                         identity_src=bool(pf["d_src"][i] < pf["d_dst"][i] and pf["d_src"][i] < M.SAME_PERSON))
        else:
            unavailable["identity"] = "no src faces: no src identity to compare with"
            for k in IDENTITY_KEYS:
                m[k] = None
        nme = M.landmark_nme(lms, rd.landmarks)
        m["landmark_nme"] = M.mean_or_none(nme["nme"])
        m["landmark_nme_eyes"] = M.mean_or_none(nme["nme_eyes"])
        m["landmark_nme_mouth"] = M.mean_or_none(nme["nme_mouth"])
        ang_s, ang_d = M.pose_angles(lms, self.side), M.pose_angles(rd.landmarks, self.side)
        err = np.abs(ang_s - ang_d)  # (N, 2) pitch, yaw in degrees
        m["pitch_error_deg"] = M.mean_or_none(err[:, 0])
        m["yaw_error_deg"] = M.mean_or_none(err[:, 1])
        no_pose = int((~np.isfinite(err).all(axis=1)).sum())
        if no_pose:
            unavailable["pose"] = f"{no_pose} face(s) without a pose estimate (solvePnP failed), left out of the means"
        if self.detect:
            found = np.array([bool(r.detected) for r in res])
            m["face_found_rate"] = float(found.mean())
            m["no_face_found"] = int((~found).sum())
        else:
            m["face_found_rate"] = m["no_face_found"] = None
            unavailable["face_found_rate"] = "detection off (--no-detect)"
        for i, f in enumerate(per_face):
            f.update(nme=_finite_or_none(nme["nme"][i]), yaw_error_deg=_finite_or_none(err[i, 1]),
                     pitch_error_deg=_finite_or_none(err[i, 0]))
            if self.detect:
                f["face_found"] = bool(res[i].detected)

    def _samples(self, swap, recons, per_face) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
        out: dict[str, np.ndarray] = {}
        rows: list[dict[str, Any]] = []
        if len(self.dst):
            idx = spread(len(self.dst), self.n_samples)
            out["dst"] = self.dst.images[idx]
            if swap is not None:
                out["swap"] = swap[idx]
            if recons.get("dst") is not None:
                out["recon_dst"] = recons["dst"][idx]
            rows = [per_face[i] for i in idx]
        if len(self.src):
            sidx = spread(len(self.src), self.n_samples)
            out["src"] = self.src.images[sidx]
            if recons.get("src") is not None:
                out["recon_src"] = recons["src"][sidx]
        return out, rows
