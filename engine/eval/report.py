"""What `torchsae eval --out DIR` writes: DIR/eval.json for scripts, DIR/report.html for people.

    eval.json      {"format": "torchsae-eval-1", "created", "key_metrics", "definitions",
                    "models": [entry, ...]}; an entry is the model's info (model, label, kind, step, run,
                    resolution, face_type, recipe), "faces" (where the src/dst faces came from), every
                    metric of engine.eval.evaluate (null when unavailable, with the reason in
                    "unavailable"), "per_face" and "grid"; a model that could not be evaluated has "error".
    grid_NN.png    per model: rows of dst | swap | dst recon | src | src recon with each swap's scores
                   (identity distances to src / dst, landmark NME, yaw error, face found); green label =
                   identified as src
    steps_NN.png   per training run with several evaluated checkpoints: each key metric over the steps,
                   with the real-face baseline dashed where one exists
    report.html    the metrics table (one row per model), the calibration, the step charts and the grids

Images are drawn with OpenCV (no plotting library in the lock); files go through engine.fileio.write_atomic.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.eval.evaluate import KEY_METRICS
from engine.fileio import write_atomic

__all__ = ["FORMAT", "DEFINITIONS", "write_report", "grid_image", "steps_image", "json_safe"]

FORMAT = "torchsae-eval-1"

DEFINITIONS = {
    "identity_retrieval": "fraction of swapped dst faces identified as src: nearer the src centroid than the dst "
                          "centroid and closer than dlib's same-person distance 0.6 (higher is better)",
    "identity_nearest_src": "fraction of swaps nearer the src centroid than the dst centroid",
    "identity_margin": "mean (distance to dst centroid - distance to src centroid) of the swaps (higher is better)",
    "identity_dist_src": "mean dlib-descriptor distance of the swaps to the src centroid (lower is better)",
    "identity_dist_dst": "mean distance of the swaps to the dst centroid",
    "identity_cos_src": "mean cosine similarity of the swaps' descriptors and the src centroid",
    "identity_dist_own_dst": "mean distance of each swap to the dst face it replaced",
    "real_identity_retrieval": "the same identification on real held-out src and dst faces (leave-one-out "
                               "centroids): 1.0 = the recognizer separates the two people at this resolution",
    "real_identity_margin": "identity_margin of real src faces: what a perfect swap would score",
    "real_identity_dist_src": "distance of real src faces to their own (leave-one-out) centroid",
    "no_swap_identity_retrieval": "identity_retrieval of dst faces returned unchanged (the floor)",
    "no_swap_identity_margin": "identity_margin of dst faces returned unchanged (the floor)",
    "landmark_nme": "68-point landmark error of swap vs its dst face / outer-eye-corner distance (lower is better; "
                    "it also counts the src identity's own face shape, e.g. the jaw line, so compare models on the "
                    "same faces rather than against 0)",
    "landmark_nme_eyes": "landmark_nme over the eye points 36-47",
    "landmark_nme_mouth": "landmark_nme over the mouth points 48-67 (expression)",
    "yaw_error_deg": "mean |yaw(swap) - yaw(dst)| in degrees (DFL's estimate_pitch_yaw_roll)",
    "pitch_error_deg": "mean |pitch(swap) - pitch(dst)| in degrees",
    "face_found_rate": "fraction of swaps in which dlib's CNN detector finds the face",
    "real_face_found_rate": "the same on the real held-out dst faces",
    "recon_dssim_src": "masked DSSIM (DFL's windows) of src faces through the src path (lower is better)",
    "recon_dssim_dst": "masked DSSIM of dst faces through the dst path (lower is better)",
    "psnr_src": "masked PSNR in dB of the src reconstruction (higher is better)",
    "psnr_dst": "masked PSNR in dB of the dst reconstruction (higher is better)",
    "mse_src": "masked MSE of the src reconstruction",
    "mse_dst": "masked MSE of the dst reconstruction",
    "n_faces": "dst faces swapped and scored",
    "n_src": "src faces (identity centroid and src reconstruction)",
}

# metric -> (direction, baseline key drawn dashed in step charts)
_CHART = {
    "identity_retrieval": ("higher", "real_identity_retrieval"),
    "identity_margin": ("higher", "real_identity_margin"),
    "landmark_nme": ("lower", None),
    "yaw_error_deg": ("lower", None),
    "recon_dssim_src": ("lower", None),
    "recon_dssim_dst": ("lower", None),
    "psnr_src": ("higher", None),
    "psnr_dst": ("higher", None),
}


def json_safe(x: Any) -> Any:
    """numpy scalars/arrays -> Python; non-finite floats -> None (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    return x


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


# ---------------------------------------------------------------------------------------------------------
# images


def _u8(img: np.ndarray, size: int) -> np.ndarray:
    img = np.clip(np.rint(np.asarray(img, np.float32) * 255.0), 0, 255).astype(np.uint8)
    if img.shape[0] != size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_CUBIC)
    return img


def _text(img: np.ndarray, lines: list[str], x: int, y: int, color=(230, 230, 230), scale: float = 0.38) -> None:
    for i, line in enumerate(lines):
        cv2.putText(img, line, (x, y + i * int(28 * scale + 4)), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


def grid_image(samples: dict[str, np.ndarray], scores: list[dict[str, Any]], title: list[str]) -> np.ndarray:
    """BGR uint8 grid: columns dst | swap | dst recon | src | src recon (those present), a score band under each
    row, a title band on top."""
    cols = [c for c in ("dst", "swap", "recon_dst", "src", "recon_src") if c in samples]
    names = {"dst": "dst", "swap": "swap (dst -> src)", "recon_dst": "dst recon", "src": "src",
             "recon_src": "src recon"}
    if not cols:
        img = np.full((60, 400, 3), 32, np.uint8)
        _text(img, title + ["no faces"], 8, 18)
        return img
    rows = max(len(samples[c]) for c in cols)
    res = next(iter(samples.values())).shape[1]
    cell = max(res, 128)
    band = 44
    head = 24 + 16 * len(title)
    img = np.full((head + rows * (cell + band), len(cols) * cell, 3), 24, np.uint8)
    _text(img, title, 6, 16)
    for j, c in enumerate(cols):
        _text(img, [names[c]], j * cell + 4, head - 6, (180, 200, 255))
    for i in range(rows):
        y = head + i * (cell + band)
        for j, c in enumerate(cols):
            if i < len(samples[c]):
                img[y:y + cell, j * cell:(j + 1) * cell] = _u8(samples[c][i], cell)
        if i < len(scores) and "swap" in cols:
            s = scores[i]
            x = cols.index("swap") * cell + 4
            ok = s.get("identity_src")
            color = (120, 220, 120) if ok else (120, 120, 240) if ok is not None else (200, 200, 200)
            line1 = f"src {_fmt(s.get('d_src'))} dst {_fmt(s.get('d_dst'))}"
            found = s.get("face_found")
            line2 = f"nme {_fmt(s.get('nme'))} yaw {_fmt(s.get('yaw_error_deg'))}" + ("" if found is None else
                                                                                       " face" if found else " NO FACE")
            _text(img, [line1, line2], x, y + cell + 16, color)
            _text(img, [s.get("name", "")], 4, y + cell + 16, (170, 170, 170))
    return img


def steps_image(entries: list[dict[str, Any]], title: str) -> np.ndarray:
    """BGR uint8 small multiples: each `_CHART` metric over the entries' steps (baseline dashed)."""
    pts = sorted((e for e in entries if e.get("step") is not None), key=lambda e: e["step"])
    w, h, pad = 300, 170, 34
    ncol = 4
    keys = list(_CHART)
    nrow = math.ceil(len(keys) / ncol)
    img = np.full((30 + nrow * h, ncol * w, 3), 255, np.uint8)
    _text(img, [title], 8, 20, (0, 0, 0), 0.5)
    steps = [e["step"] for e in pts]
    s0, s1 = (min(steps), max(steps)) if steps else (0, 1)
    for k, key in enumerate(keys):
        ox, oy = (k % ncol) * w, 30 + (k // ncol) * h
        direction, base_key = _CHART[key]
        vals = [e.get(key) for e in pts]
        base = [e.get(base_key) for e in pts] if base_key else []
        finite = [v for v in vals + base if isinstance(v, (int, float)) and math.isfinite(v)]
        _text(img, [f"{key} ({direction} is better)"], ox + 6, oy + 14, (0, 0, 0), 0.38)
        x0, x1, y0, y1 = ox + pad, ox + w - 10, oy + 24, oy + h - 22
        cv2.rectangle(img, (x0, y0), (x1, y1), (200, 200, 200), 1)
        if not finite:
            _text(img, ["no values"], x0 + 6, y0 + 20, (120, 120, 120))
            continue
        lo, hi = min(finite), max(finite)
        if hi - lo < 1e-9:
            lo, hi = lo - 0.5 * max(abs(lo), 1e-3), hi + 0.5 * max(abs(hi), 1e-3)
        fx = lambda s: int(x0 + (x1 - x0) * ((s - s0) / (s1 - s0) if s1 > s0 else 0.5))  # noqa: E731
        fy = lambda v: int(y1 - (y1 - y0) * (v - lo) / (hi - lo))  # noqa: E731
        _text(img, [_fmt(hi)], ox + 2, y0 + 8, (90, 90, 90), 0.32)
        _text(img, [_fmt(lo)], ox + 2, y1, (90, 90, 90), 0.32)
        _text(img, [str(s0)], x0, y1 + 14, (90, 90, 90), 0.32)
        _text(img, [str(s1)], x1 - 8 * len(str(s1)), y1 + 14, (90, 90, 90), 0.32)
        for series, color, dashed in ((base, (60, 160, 60), True), (vals, (200, 80, 20), False)):
            xy = [(fx(s), fy(v)) for s, v in zip(steps, series) if isinstance(v, (int, float)) and math.isfinite(v)]
            for a, b in zip(xy, xy[1:]):
                if dashed:
                    n = max(1, int(math.hypot(b[0] - a[0], b[1] - a[1]) // 6))
                    for t in range(0, n, 2):
                        p = (int(a[0] + (b[0] - a[0]) * t / n), int(a[1] + (b[1] - a[1]) * t / n))
                        q = (int(a[0] + (b[0] - a[0]) * (t + 1) / n), int(a[1] + (b[1] - a[1]) * (t + 1) / n))
                        cv2.line(img, p, q, color, 1, cv2.LINE_AA)
                else:
                    cv2.line(img, a, b, color, 2, cv2.LINE_AA)
            if not dashed:
                for p in xy:
                    cv2.circle(img, p, 3, color, -1, cv2.LINE_AA)
    return img


def _write_png(path: Path, img: np.ndarray) -> None:
    ok, enc = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"{path}: OpenCV could not encode the image")
    write_atomic(path, enc.tobytes())


# ---------------------------------------------------------------------------------------------------------
# the report


def _runs(entries: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Entries grouped by run folder, only runs with at least two evaluated steps."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        if e.get("run") and e.get("step") is not None and "error" not in e:
            groups.setdefault(e["run"], []).append(e)
    return {k: v for k, v in groups.items() if len({e["step"] for e in v}) >= 2}


def write_report(out_dir: str | Path, entries: list[dict[str, Any]], results: list[Any | None]) -> Path:
    """Write eval.json, the grids, the step charts and report.html into `out_dir`; returns eval.json's path.

    entries: one dict per model (info + metrics, or info + "error"); results: the EvalResult of each entry
    (None for failed ones), for the sample images."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i, (e, r) in enumerate(zip(entries, results)):
        if r is None:
            continue
        title = [f"{e.get('label')}  step {e.get('step')}  {e.get('resolution')}px {e.get('face_type')}",
                 "  ".join(f"{k} {_fmt(e.get(k))}" for k in ("identity_retrieval", "identity_margin", "landmark_nme",
                                                            "recon_dssim_src"))]
        name = f"grid_{i:02d}.png"
        _write_png(out / name, grid_image(r.samples, r.sample_scores, title))
        e["grid"] = name
    charts = []
    for j, (run, group) in enumerate(sorted(_runs(entries).items())):
        name = f"steps_{j:02d}.png"
        _write_png(out / name, steps_image(group, f"{run}: metrics over training steps"))
        charts.append((run, name))
        for e in group:
            e["steps_chart"] = name
    doc = {"format": FORMAT, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "key_metrics": list(KEY_METRICS), "definitions": DEFINITIONS, "models": entries}
    path = write_atomic(out / "eval.json", json.dumps(json_safe(doc), indent=1) + "\n")
    write_atomic(out / "report.html", _html(doc, charts))
    return path


_TABLE_COLS = ("step", "identity_retrieval", "identity_margin", "identity_dist_src", "landmark_nme",
               "landmark_nme_mouth", "yaw_error_deg", "pitch_error_deg", "face_found_rate", "recon_dssim_src",
               "recon_dssim_dst", "psnr_src", "psnr_dst", "n_faces", "n_src")
_CAL_COLS = ("real_identity_retrieval", "real_identity_margin", "real_identity_dist_src", "no_swap_identity_retrieval",
             "no_swap_identity_margin", "real_face_found_rate", "real_centroid_distance")


def _html(doc: dict[str, Any], charts: list[tuple[str, str]]) -> str:
    esc = html.escape
    models = doc["models"]
    rows = []
    for e in models:
        if "error" in e:
            rows.append(f"<tr><td>{esc(str(e.get('label')))}</td><td colspan={len(_TABLE_COLS)} class=err>"
                        f"{esc(e['error'])}</td></tr>")
            continue
        cells = "".join(f"<td>{esc(_fmt(e.get(c)))}</td>" for c in _TABLE_COLS)
        rows.append(f"<tr><td>{esc(str(e.get('label')))}</td>{cells}</tr>")
    cal_rows = []
    for e in models:
        if "error" in e:
            continue
        faces = e.get("faces", {})
        cells = "".join(f"<td>{esc(_fmt(e.get(c)))}</td>" for c in _CAL_COLS)
        cal_rows.append(f"<tr><td>{esc(str(e.get('label')))}</td><td>{esc(str(faces.get('source', '')))}</td>"
                        f"<td>{esc(str(faces.get('src', '')))}</td><td>{esc(str(faces.get('dst', '')))}</td>"
                        f"{cells}</tr>")
    notes = []
    for e in models:
        items = [f"warning: {w}" for w in e.get("warnings", [])]
        items += [f"{k} unavailable: {v}" for k, v in e.get("unavailable", {}).items()]
        items += [f"skipped {v}: {k}" for k, v in e.get("skipped", {}).items()]
        if items:
            notes.append(f"<li><b>{esc(str(e.get('label')))}</b><ul>" + "".join(f"<li>{esc(i)}</li>" for i in items)
                         + "</ul></li>")
    defs = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in doc["definitions"].items())
    head = "".join(f"<th>{esc(c)}</th>" for c in ("model",) + _TABLE_COLS)
    cal_head = "".join(f"<th>{esc(c)}</th>" for c in ("model", "faces", "src", "dst") + _CAL_COLS)
    parts = [
        "<!doctype html><html><head><meta charset=utf-8><title>torchsae eval</title><style>"
        "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child{text-align:left}"
        ".err{color:#b00;text-align:left}img{max-width:100%;margin:6px 0}</style></head><body>",
        f"<h1>Swap quality</h1><p>{esc(doc['created'])} · {len(models)} model(s) · eval.json holds every number "
        "and the per-face scores.</p>",
        f"<h2>Metrics</h2><table><tr>{head}</tr>{''.join(rows)}</table>",
        f"<h2>Real-face calibration</h2><table><tr>{cal_head}</tr>{''.join(cal_rows)}</table>",
    ]
    if charts:
        parts.append("<h2>Over training steps</h2>")
        parts += [f"<h3>{esc(run)}</h3><img src='{esc(name)}'>" for run, name in charts]
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(notes) + "</ul>")
    parts.append("<h2>Samples</h2>")
    parts += [f"<h3>{esc(str(e.get('label')))}</h3><img src='{esc(e['grid'])}'>" for e in models if e.get("grid")]
    parts.append(f"<h2>Definitions</h2><table>{defs}</table></body></html>\n")
    return "\n".join(parts)
