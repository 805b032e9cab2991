"""Preview images: labelled columns for a few fixed samples, plus DFL's loss graph strip (docs/dfl.md §11.5).

Columns (each a face at model resolution, BGR):
    A_original, A_xseg_mask_overlay, A_recon (A->A), B_original, B_xseg_mask_overlay, B_recon (B->B),
    A_to_B (the swap: B's pose and expression with A's identity — DFL's pred_src_dst)
Like DFL, the network runs on the *target* (unwarped) faces. The mask overlay tints the area outside the
target mask (XSeg mask when the faceset has one, else the landmark hull) as DFL's XSeg preview does.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping

import cv2
import numpy as np
import torch
from torch import nn

PREVIEW_KEYS = ("target_src", "target_srcm", "target_dst", "target_dstm")  # what a preview sample keeps of a batch
COLUMNS = ("A_original", "A_xseg_mask_overlay", "A_recon", "B_original", "B_xseg_mask_overlay", "B_recon", "A_to_B")
GRAPH_H = 100


def mask_overlay(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H,W,3) BGR in [0,1], (H,W,1) mask -> the face with the outside tinted green at 0.5 (DFL's XSeg preview)."""
    green = np.zeros_like(img)
    green[..., 1] = 1.0
    outside = 1.0 - np.clip(mask, 0, 1)
    return img * (1 - 0.5 * outside) + green * 0.5 * outside


def loss_graph(history: np.ndarray, width: int, height: int = GRAPH_H) -> np.ndarray:
    """DFL's loss strip: per column the min..max of each loss over its bucket of steps, y scale
    2·mean(history[len//5:]), one hue per loss, 5 grid lines. history: (steps, n_losses)."""
    img = np.full((height, width, 3), 0.1, np.float32)
    for i in range(1, 5):
        y = height * i // 5
        img[y, :, :] = 0.2
    if history is None or len(history) == 0:
        return img
    h = np.asarray(history, np.float32).reshape(len(history), -1)
    tail = h[len(h) // 5:]
    scale = 2.0 * float(np.mean(tail)) if np.isfinite(tail).all() and np.mean(tail) > 0 else float(np.nanmax(h) or 1)
    n = h.shape[1]
    edges = np.linspace(0, len(h), width + 1).astype(int)
    for x in range(width):
        a, b = edges[x], max(edges[x + 1], edges[x] + 1)
        bucket = h[a:min(b, len(h))]
        if len(bucket) == 0:
            continue
        for k in range(n):
            lo, hi = np.nanmin(bucket[:, k]), np.nanmax(bucket[:, k])
            y0 = int(np.clip((1 - hi / scale) * (height - 1), 0, height - 1))
            y1 = int(np.clip((1 - lo / scale) * (height - 1), 0, height - 1))
            color = colorsys.hsv_to_rgb(k / max(1, n), 1.0, 1.0)[::-1]
            img[y0:y1 + 1, x] = color
    return img


def _fit_label(name: str, width: int) -> tuple[list[str], float]:
    """The column label as 1–3 lines (split at '_') and the largest font scale (0.3..0.45) that fits."""
    parts = name.split("_")
    for n_lines in (1, 2, 3):
        per = -(-len(parts) // n_lines)
        lines = ["_".join(parts[i:i + per]) for i in range(0, len(parts), per)]
        for scale in (0.45, 0.4, 0.35, 0.3):
            if all(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] <= width - 4 for t in lines):
                return lines, scale
    return lines, 0.3


def compose(columns: dict[str, np.ndarray], *, step: int, history: np.ndarray | None = None,
            loss_names: tuple[str, ...] = ()) -> np.ndarray:
    """columns: name -> (n, H, W, 3) float BGR in [0,1]. Returns a uint8 BGR image with labels on top,
    the loss graph below the labels, and one row per sample."""
    names = [c for c in COLUMNS if c in columns] + [c for c in columns if c not in COLUMNS]
    n, hh, ww = next(iter(columns.values())).shape[:3]
    grid = np.concatenate([np.concatenate([np.clip(columns[c][i], 0, 1) for c in names], axis=1) for i in range(n)],
                          axis=0)
    width = grid.shape[1]
    lines = [_fit_label(name, ww) for name in names]
    common = min(sc for _, sc in lines)  # one font size for every column
    lines = [(ls, common) for ls, _ in lines]
    rows = max(len(ls) for ls, _ in lines)
    # Text is drawn on uint8 images: OpenCV 5's putText accepts only 8-bit images (4.x also drew on float).
    label = np.full((8 + 12 * rows + 4, width, 3), _u8(0.15), np.uint8)
    for j, (ls, sc) in enumerate(lines):
        for k, text in enumerate(ls):
            cv2.putText(label, text, (j * ww + 2, 14 + 12 * k), cv2.FONT_HERSHEY_SIMPLEX, sc, (255, 255, 255), 1,
                        cv2.LINE_AA)
    graph = _to_u8(loss_graph(history, width))
    text = f"Iter: {step}" + ("  " + "  ".join(loss_names) if loss_names else "")
    cv2.putText(graph, text, (4, GRAPH_H - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([label, graph, _to_u8(grid)], axis=0)


def _to_u8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _u8(v: float) -> int:
    return int(v * 255 + 0.5)


def preview_samples(batch: Mapping[str, torch.Tensor], resolution: int) -> dict[str, torch.Tensor]:
    """The fixed preview samples taken from a batch: up to 4 (fewer above res 200, as DFL), targets and masks."""
    n = min(4, batch["target_src"].shape[0], max(1, 800 // resolution))
    return {k: batch[k][:n].clone() for k in PREVIEW_KEYS}


def render(model: nn.Module, samples: Mapping[str, torch.Tensor], *, step: int, history) -> np.ndarray:
    """The preview image (uint8 BGR) of `model` on the fixed `samples`: originals, mask overlays,
    reconstructions and the swap, with DFL's loss graph of `history` ([[src, dst], ...])."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.forward_train(samples["target_src"], samples["target_dst"])
    model.train(was_training)
    nhwc = lambda t: t.detach().float().cpu().permute(0, 2, 3, 1).numpy()  # noqa: E731
    a, b = nhwc(samples["target_src"]), nhwc(samples["target_dst"])
    am, bm = nhwc(samples["target_srcm"]), nhwc(samples["target_dstm"])
    cols = {
        "A_original": a, "A_xseg_mask_overlay": np.stack([mask_overlay(x, m) for x, m in zip(a, am)]),
        "A_recon": nhwc(out["pred_src_src"]),
        "B_original": b, "B_xseg_mask_overlay": np.stack([mask_overlay(x, m) for x, m in zip(b, bm)]),
        "B_recon": nhwc(out["pred_dst_dst"]), "A_to_B": nhwc(out["pred_src_dst"]),
    }
    return compose(cols, step=step, history=np.asarray(history[-100000:]), loss_names=("src", "dst"))
