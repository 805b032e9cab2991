"""`python -m bench`: run benchmark suites with pytest-benchmark, store tracked JSON, compare, gate.

A suite is a folder bench/<suite>/ of pytest-benchmark tests (see bench/README.md for the conventions:
`benchmark.group` = the figure compared, `benchmark.extra_info["provider"]`, optional ["items"]).

Steps: run pytest-benchmark (warm-up on, at least 5 rounds) → one JSON per machine and day+commit under
bench/results/<machine>/<YYYY-MM-DD>-<gitsha>.json (git sha, versions, machine, torch threads, load) →
per group: each provider's median, IQR, items/s and speed-up vs "reference" → per figure: change against
the last stored result for the same machine → exit 1 when any median got slower by more than the
threshold (default 25%), unless --overwrite / OVERWRITE=1. A regressed run is not stored, so the old
baseline keeps gating until the regression is fixed or accepted with --overwrite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
THRESHOLD = 0.25  # a median 25% slower than last time fails; shared CPUs jitter by ~10%
PYTEST_ARGS = ["--benchmark-only", "--benchmark-warmup=on", "--benchmark-warmup-iterations=1",
               "--benchmark-min-rounds=5", "--benchmark-max-time=2.0", "--benchmark-columns=min,median,iqr,rounds",
               "--benchmark-sort=name", "-p", "no:cacheprovider", "-p", "no:xdist", "-q", "-rs", "-o", "addopts="]


def suites() -> list[str]:
    return sorted(p.name for p in BENCH.iterdir()
                  if p.is_dir() and p.name != "results" and any(p.glob("test_*.py")))


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict:
    """A hostname-independent id: CPU model + logical core count (what the numbers depend on)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = os.cpu_count() or 1
    slug = re.sub(r"\((r|tm)\)|\bcpu\b|@.*$", "", model.lower())
    slug = re.sub(r"[^a-z0-9]+", "-", slug).strip("-")
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
            slug += "-" + re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    except Exception:  # noqa: BLE001 - machine id must not depend on torch working
        pass
    return {"id": f"{slug}-{cores}c", "cpu": model, "cores": cores, "gpu": gpu, "arch": platform.machine()}


def versions() -> dict:
    v = {"python": platform.python_version()}
    for mod, name in (("torch", "torch"), ("numpy", "numpy"), ("cv2", "cv2"), ("triton", "triton"),
                      ("pytest_benchmark", "pytest-benchmark")):
        try:
            v[name] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - absent optional packages are recorded as absent
            v[name] = None
    return v


def _threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except Exception:  # noqa: BLE001
        return None


def run_suite(suite: str, keyword: str | None) -> list[dict]:
    """Run one suite under pytest-benchmark; return one row per benchmark."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-m", "pytest", str(BENCH / suite), f"--benchmark-json={out}", *PYTEST_ARGS]
        if keyword:
            cmd += ["-k", keyword]
        print("$", " ".join(cmd), flush=True)
        rc = subprocess.run(cmd, cwd=ROOT, check=False).returncode
        if rc not in (0, 5):  # 5: nothing collected (e.g. -k matched nothing)
            raise SystemExit(f"bench: suite {suite!r} failed (pytest exit {rc}); nothing stored")
        if not out.exists():
            return []
        data = json.loads(out.read_text())
    rows = []
    for b in data["benchmarks"]:
        s = b["stats"]
        extra = dict(b.get("extra_info") or {})
        rows.append({
            "suite": suite, "name": b["fullname"], "group": b.get("group") or b["name"],
            "provider": extra.pop("provider", b["name"]), "items": extra.pop("items", None), "extra": extra,
            "median_s": s["median"], "iqr_s": s["iqr"], "q1_s": s["q1"], "q3_s": s["q3"], "min_s": s["min"],
            "mean_s": s["mean"], "stddev_s": s["stddev"], "rounds": s["rounds"], "iterations": s["iterations"],
        })
    return rows


def _fmt_t(sec: float) -> str:
    return f"{sec * 1e3:9.2f} ms" if sec < 10 else f"{sec:9.2f} s "


def report(rows: list[dict]) -> None:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    for g, rs in groups.items():
        ref = next((r for r in rs if r["provider"] == "reference"), None)
        print(f"\n{g}")
        print(f"  {'provider':<18}{'median':>12}{'IQR':>12}{'items/s':>11}{'vs reference':>15}")
        for r in sorted(rs, key=lambda r: r["median_s"]):
            ips = f"{r['items'] / r['median_s']:10.1f}" if r["items"] else f"{'':>10}"
            ratio = f"{ref['median_s'] / r['median_s']:12.2f}x" if ref else f"{'(no ref)':>13}"
            print(f"  {r['provider']:<18}{_fmt_t(r['median_s']):>12}{_fmt_t(r['iqr_s']):>12} {ips}  {ratio}")


def _previous(mdir: Path, exclude: Path | None = None) -> dict[str, dict]:
    """Latest stored row per benchmark name across this machine's files (oldest file first, newest wins)."""
    docs = []
    for f in mdir.glob("*.json") if mdir.is_dir() else []:
        try:
            docs.append(json.loads(f.read_text()))
        except (OSError, json.JSONDecodeError):
            print(f"bench: ignoring unreadable {f}")
    latest: dict[str, dict] = {}
    for d in sorted(docs, key=lambda d: d.get("created", "")):
        for r in d.get("benchmarks", []):
            latest[r["name"]] = {**r, "sha": d.get("git_sha"), "created": d.get("created")}
    return latest


def compare(rows: list[dict], previous: dict[str, dict], threshold: float) -> list[str]:
    """Print each figure's change vs its last stored value; return the regressions beyond `threshold`."""
    regressions = []
    if not previous:
        print("\nno earlier results for this machine: this run becomes the baseline")
        return regressions
    print(f"\nchange vs last stored result (regression threshold +{threshold:.0%} on the median)")
    for r in rows:
        old = previous.get(r["name"])
        label = f"{r['group']} / {r['provider']}"
        if old is None:
            print(f"  {label:<60} new")
            continue
        change = r["median_s"] / old["median_s"] - 1.0
        flag = "REGRESSION" if change > threshold else ""
        print(f"  {label:<60} {_fmt_t(old['median_s'])} -> {_fmt_t(r['median_s'])}  {change:+7.1%}  "
              f"(was {old.get('sha') or '?'} {(old.get('created') or '')[:10]}) {flag}")
        if flag:
            regressions.append(f"{label}: {change:+.1%}")
    return regressions


def quality_regressions(rows: list[dict], previous: dict[str, dict]) -> list[str]:
    """Rows that carry extra["quality"] (metric values) and extra["quality_gate"] ({metric: [direction,
    tolerance]}, direction "higher"/"lower" is better): print each gated metric against its last stored
    value; return those that moved the wrong way by more than their tolerance (bench/quality)."""
    out = []
    for r in rows:
        q, gate = r.get("extra", {}).get("quality"), r.get("extra", {}).get("quality_gate")
        if not q or not gate:
            continue
        old = (previous.get(r["name"]) or {}).get("extra", {}).get("quality") or {}
        print(f"\nquality: {r['group']} / {r['provider']}")
        for metric, (direction, tol) in gate.items():
            new_v, old_v = q.get(metric), old.get(metric)
            if new_v is None:
                print(f"  {metric:<22} (missing)")
                continue
            if old_v is None:
                print(f"  {metric:<22} {new_v:10.4f}  new")
                continue
            worse = (old_v - new_v) if direction == "higher" else (new_v - old_v)
            flag = "REGRESSION" if worse > tol else ""
            print(f"  {metric:<22} {old_v:10.4f} -> {new_v:10.4f}  ({direction} is better, tolerance {tol}) {flag}")
            if flag:
                out.append(f"{r['group']} / {r['provider']}: {metric} {old_v:.4g} -> {new_v:.4g}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", action="append", choices=suites() or None,
                    help="suite folder under bench/ (repeatable; default: all)")
    ap.add_argument("--overwrite", action="store_true", default=os.environ.get("OVERWRITE", "") not in ("", "0"),
                    help="store the results even if they regress (accept them as the new baseline); also OVERWRITE=1")
    ap.add_argument("--threshold", type=float, default=float(os.environ.get("BENCH_THRESHOLD", THRESHOLD)),
                    help=f"allowed slow-down of a median before failing (default {THRESHOLD}; also BENCH_THRESHOLD)")
    ap.add_argument("-k", dest="keyword", help="pytest -k expression to run a subset")
    ap.add_argument("--device", default=os.environ.get("TORCHSAE_BENCH_DEVICE", "auto"),
                    help="training device of the suites that train or augment (pipeline): auto (CUDA when "
                         "present), cpu or cuda; also DEVICE=... for make, TORCHSAE_BENCH_DEVICE")
    args = ap.parse_args(argv)
    os.environ["TORCHSAE_BENCH_DEVICE"] = args.device  # read by the suites (bench/pipeline/common.py)

    chosen = args.suite or suites()
    if not chosen:
        print("bench: no suites found (folders bench/<suite>/ with test_*.py)")
        return 1
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = [r for s in chosen for r in run_suite(s, args.keyword)]
    if not rows:
        print("bench: no benchmarks ran")
        return 1
    m = machine()
    sha = _git("rev-parse", "--short=12", "HEAD") or "nocommit"
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no")) if sha != "nocommit" else True
    now = dt.datetime.now(dt.timezone.utc)
    doc = {
        "created": now.isoformat(timespec="seconds"), "git_sha": sha, "git_dirty": dirty, "machine": m,
        "versions": versions(), "torch_threads": _threads(), "suites": chosen, "threshold": args.threshold,
        "load_avg_before": load_before, "load_avg_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "benchmarks": rows,
    }
    report(rows)
    mdir = RESULTS / m["id"]
    out = mdir / f"{now:%Y-%m-%d}-{sha}.json"
    previous = _previous(mdir)
    regressions = compare(rows, previous, args.threshold) + quality_regressions(rows, previous)
    print(f"\nmachine {m['id']} | torch threads {doc['torch_threads']} | load {load_before} -> {doc['load_avg_after']}"
          f" | git {sha}{' (dirty)' if dirty else ''}")
    if regressions and not args.overwrite:
        print("\nbench: REGRESSION beyond the threshold, results NOT stored:\n  " + "\n  ".join(regressions)
              + "\nfix it, or accept the new numbers with --overwrite (OVERWRITE=1)")
        return 1
    mdir.mkdir(parents=True, exist_ok=True)
    # suites run in parallel merge into the same day+commit file; the lock lives outside the tracked tree
    with open(Path(tempfile.gettempdir()) / f"torchsae-bench-{m['id']}.lock", "w") as lock:
        _flock(lock)
        if out.exists():  # same day and commit: keep the other suites' rows, replace the ones re-run now
            old = json.loads(out.read_text())
            names = {r["name"] for r in rows}
            doc["benchmarks"] = [r for r in old.get("benchmarks", []) if r["name"] not in names] + rows
            doc["suites"] = sorted(set(old.get("suites", [])) | set(chosen))
        tmp = out.with_suffix(f".json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, out)
    print(f"stored {os.path.relpath(out, ROOT)}")
    return 0


def _flock(f) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: no concurrent runs expected
        return
    fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed
