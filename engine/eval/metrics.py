"""Swap-quality metrics: identity transfer, pose and expression fidelity, reconstruction. Pure functions of
arrays (embeddings, landmarks, images); engine.eval.evaluate feeds them.

Identity (dlib's 128-D descriptors, Euclidean distance; dlib calls two faces the same person below 0.6):
  c_src, c_dst     centroids of the real held-out src / dst faces' embeddings
  d_src(x), d_dst(x) = ‖e(x) − c_src‖, ‖e(x) − c_dst‖
  identity_retrieval   fraction of swapped faces identified as src: nearest identity is src AND
                       d_src < 0.6 (open-set identification; with only two identities, nearest-centroid
                       alone would credit half of all garbage outputs, which sit far from both)
  identity_nearest_src fraction with d_src < d_dst alone
  identity_margin      mean(d_dst − d_src): > 0 when swaps sit closer to src than to dst
  identity_cos_src     mean cosine similarity of e(swap) and c_src (the measure of ArcFace-style papers)
  identity_dist_own_dst  mean ‖e(swap) − e(the dst face it replaced)‖ (how much dst identity survives)
Calibration on real faces (`real_calibration`): each real face against its own identity's centroid
without itself (leave-one-out; a centroid containing the face would flatter it) and the other identity's
centroid: `real_identity_retrieval` (fraction of real src and dst faces identified as their own identity
by the same rule: does the recognizer separate these two people at this resolution at all?), `real_identity_margin` and
`real_identity_dist_src` (what a perfect swap — a real src face — would score), and the `no_swap_*`
figures of the identity function (dst faces returned unchanged), the floor a swap must beat.

Pose and expression (68 dlib landmarks of the swap vs of the dst face it replaced, same rectangle):
  landmark_nme   mean over points of ‖p_swap − p_dst‖ / ‖p_dst[36] − p_dst[45]‖ (inter-ocular: the outer
                 eye corners, the 300-W convention), per face; also over eyes (36–47) and mouth (48–67).
                 A perfect swap does not score 0: the src identity's face shape (jaw, brows, proportions)
                 differs from dst's, so the figure compares models on the same faces; it is not separated
                 from identity like a 3DMM expression coefficient would be.
  yaw/pitch error  |angle(swap) − angle(dst)| in degrees from DFL's estimate_pitch_yaw_roll (docs/dfl.md §6.6)

Reconstruction per identity (a face through its own identity's path, no augmentation) inside DFL's
training mask m = clip(blur(mask, max(1, R//32)), 0, 0.5)·2 (docs/dfl.md §3.3), both images multiplied by m:
  dssim  SAEHD's structural term without its weight: mean_C dssim with DFL's windows (int(R/11.6), plus
         int(R/23.2) from R = 256, averaged), computed by kernels.dssim like the loss
  mse    Σ m·(p − t)² / (C·Σ m)  (mean over the face);  psnr = 10·log10(1 / mse), at most 100 dB (identical
         images would give infinity, which JSON cannot hold)
"""

from __future__ import annotations

import math

import numpy as np
import torch

from engine.faces.landmarks import estimate_pitch_yaw_roll
from engine.errors import DataError
from engine.losses.ops import gaussian_blur
from kernels.dssim import saehd_dssim

__all__ = ["SAME_PERSON", "distances", "identity_metrics", "real_calibration", "landmark_nme", "pose_angles",
           "recon_metrics", "mean_or_none"]

SAME_PERSON = 0.6  # dlib's decision threshold for its face descriptor
PSNR_CAP = 100.0  # dB, the PSNR of identical images
_EYES = np.r_[36:48]
_MOUTH = np.r_[48:68]


def mean_or_none(x) -> float | None:
    """Mean of the finite values, None when there are none (JSON null, not NaN)."""
    a = np.asarray(x, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else None


def distances(emb: np.ndarray, centroid: np.ndarray) -> np.ndarray:
    """(N,) Euclidean distances of embeddings (N, 128) to one centroid (128,)."""
    return np.linalg.norm(np.asarray(emb, np.float64) - np.asarray(centroid, np.float64)[None], axis=1)


def _cos(emb: np.ndarray, c: np.ndarray) -> np.ndarray:
    e = np.asarray(emb, np.float64)
    return (e @ c) / np.maximum(np.linalg.norm(e, axis=1) * np.linalg.norm(c), 1e-12)


def identity_metrics(swap_emb: np.ndarray, c_src: np.ndarray, c_dst: np.ndarray, own_dst_emb: np.ndarray
                     ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(summary, per-face arrays) of the swaps' identity (module docstring). swap_emb, own_dst_emb (N, 128)."""
    d_src, d_dst = distances(swap_emb, c_src), distances(swap_emb, c_dst)
    d_own = np.linalg.norm(np.asarray(swap_emb) - np.asarray(own_dst_emb), axis=1)
    summary = {
        "identity_retrieval": float(np.mean((d_src < d_dst) & (d_src < SAME_PERSON))),
        "identity_nearest_src": float(np.mean(d_src < d_dst)),
        "identity_margin": float(np.mean(d_dst - d_src)),
        "identity_dist_src": float(np.mean(d_src)),
        "identity_dist_dst": float(np.mean(d_dst)),
        "identity_cos_src": float(np.mean(_cos(swap_emb, c_src))),
        "identity_dist_own_dst": float(np.mean(d_own)),
    }
    return summary, {"d_src": d_src, "d_dst": d_dst, "d_own_dst": d_own}


def _loo_distances(emb: np.ndarray) -> np.ndarray:
    """Distance of each embedding to the mean of the others (its own centroid without it); (N,). With a
    single face there is no other: the full centroid is used (distance 0)."""
    n = len(emb)
    if n < 2:
        return distances(emb, emb.mean(0))
    loo = (emb.sum(0)[None] - emb) / (n - 1)
    return np.linalg.norm(emb - loo, axis=1)


def real_calibration(src_emb: np.ndarray, dst_emb: np.ndarray) -> dict[str, float | int | None]:
    """How the recognizer sees the real held-out faces (module docstring); src_emb (Ns, 128), dst_emb (Nd, 128)."""
    out: dict[str, float | int | None] = {"n_real_src": int(len(src_emb)), "n_real_dst": int(len(dst_emb))}
    if len(src_emb) == 0 or len(dst_emb) == 0:
        for k in ("real_identity_retrieval", "real_identity_margin", "real_identity_dist_src", "real_centroid_distance",
                  "no_swap_identity_retrieval", "no_swap_identity_margin"):
            out[k] = None
        return out
    c_src, c_dst = src_emb.mean(0), dst_emb.mean(0)
    src_own, src_other = _loo_distances(src_emb), distances(src_emb, c_dst)
    dst_own, dst_other = _loo_distances(dst_emb), distances(dst_emb, c_src)
    own = np.r_[(src_own < src_other) & (src_own < SAME_PERSON), (dst_own < dst_other) & (dst_own < SAME_PERSON)]
    out["real_identity_retrieval"] = float(np.mean(own))
    out["real_identity_margin"] = float(np.mean(src_other - src_own))
    out["real_identity_dist_src"] = float(np.mean(src_own))
    out["real_centroid_distance"] = float(np.linalg.norm(c_src - c_dst))
    # the identity function as a "swap": dst faces unchanged, judged like swaps (d_dst - d_src, nearest = src)
    out["no_swap_identity_retrieval"] = float(np.mean((dst_other < dst_own) & (dst_other < SAME_PERSON)))
    out["no_swap_identity_margin"] = float(np.mean(dst_own - dst_other))
    out["loo"] = bool(len(src_emb) >= 2 and len(dst_emb) >= 2)
    return out


def landmark_nme(pred: np.ndarray, ref: np.ndarray) -> dict[str, np.ndarray]:
    """Per-face normalised mean errors of landmarks pred vs ref, (N, 68, 2) each: "nme" (all points),
    "nme_eyes", "nme_mouth"; normalised by ref's outer-eye-corner distance (NaN when it is 0)."""
    pred, ref = np.asarray(pred, np.float64), np.asarray(ref, np.float64)
    iod = np.linalg.norm(ref[:, 36] - ref[:, 45], axis=1)
    iod = np.where(iod > 0, iod, np.nan)
    err = np.linalg.norm(pred - ref, axis=2)  # (N, 68)
    return {"nme": err.mean(1) / iod, "nme_eyes": err[:, _EYES].mean(1) / iod,
            "nme_mouth": err[:, _MOUTH].mean(1) / iod}


def pose_angles(landmarks: np.ndarray, size: int) -> np.ndarray:
    """(N, 2) (pitch, yaw) in degrees of aligned landmarks (N, 68, 2) in a crop of side `size` (DFL's
    estimate_pitch_yaw_roll); NaN where solvePnP finds no pose."""
    out = np.full((len(landmarks), 2), np.nan)
    for i, lm in enumerate(landmarks):
        try:
            p, y, _r = estimate_pitch_yaw_roll(lm, size=size)
        except DataError:
            continue
        out[i] = math.degrees(p), math.degrees(y)
    return out


def _nchw(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    return t.float().permute(0, 3, 1, 2).contiguous()


def recon_metrics(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, *, kernels: str = "auto"
                  ) -> dict[str, np.ndarray]:
    """Per-face masked "dssim", "mse", "psnr" (module docstring) of pred vs target (N, R, R, 3) float [0, 1]
    NHWC, mask (N, R, R, 1). Identical images give dssim 0, mse 0, psnr PSNR_CAP."""
    p, t, m = _nchw(pred), _nchw(target), _nchw(mask)
    r = int(p.shape[-1])
    with torch.no_grad():
        mb = gaussian_blur(m, max(1, r // 32)).clamp(0.0, 0.5) * 2.0
        pm, tm = p * mb, t * mb
        dssim = saehd_dssim(pm, tm, r, impl=kernels) / 10.0  # SAEHD's weight 10 (5 + 5 from R = 256) removed
        c = p.shape[1]
        num = (mb * (p - t) ** 2).sum(dim=(1, 2, 3))
        den = (mb.sum(dim=(1, 2, 3)) * c).clamp_min(1e-12)
        mse = num / den
    mse_np = mse.double().numpy()
    psnr = 10.0 * np.log10(1.0 / np.maximum(mse_np, 10.0 ** (-PSNR_CAP / 10.0)))
    return {"dssim": dssim.double().numpy(), "mse": mse_np, "psnr": psnr}
