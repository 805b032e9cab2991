"""The built wheel carries everything the kernels need: build it from a copy of the source tree, install it into
an isolated folder, and run one training step from that folder with every C path requested explicitly.

Why: pyproject's package-data once listed the C sources op by op and missed kernels/dfl_update/*.c, so a
non-editable install lost the fused optimizer update without a word. The installed package must import from
the install folder (not from this checkout: the child's sys.path holds no path inside the repository other
than the interpreter's own site-packages, and the editable install's finder is removed), build its C kernels from the installed sources into a fresh cache, and
report "cpu (requested)" for dssim, warp and dfl_update; a missing C source raises there (an explicit request
never falls back). ~15 s on the 2-core development machine, most of it the child's imports and C builds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

from synthetic_faces import write_synthetic_faceset

ROOT = Path(__file__).resolve().parents[1]
OPS = ("dssim", "warp", "dfl_update")

CHILD = textwrap.dedent('''
    import logging, os, sys

    target, repo, recipe_path, src, dst, run_dir = sys.argv[1:7]
    venv = os.path.realpath(sys.prefix)  # the interpreter's own packages (torch, ...) may sit in repo/.venv
    inside = lambda p: (os.path.realpath(p or ".") + "/").startswith(os.path.realpath(repo) + "/") and not (
        os.path.realpath(p) + "/").startswith(venv + "/")
    sys.path[:] = [target] + [p for p in sys.path if p and not inside(p)]
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    assert not any(inside(p) for p in sys.path[1:]), sys.path
    logging.basicConfig(level=logging.INFO, format="LOG %(name)s %(message)s", stream=sys.stdout)

    import engine, kernels
    from kernels.dfl_update import cpu as dfl_cpu
    from kernels.dssim import cpu as dssim_cpu
    from kernels.warp import cpu as warp_cpu
    for mod in (engine, kernels):
        assert mod.__file__.startswith(target), f"{mod.__name__} imported from {mod.__file__}, not {target}"
    for c in (dssim_cpu, warp_cpu, dfl_cpu):
        print("SOURCE", c.SOURCE, c.SOURCE.is_file())

    import torch
    from engine import recipe
    from engine.train.build import build_trainer

    r = recipe.load(recipe_path, [f"data.src='{src}'", f"data.dst='{dst}'", "data.workers=0",
                                  f"train.run_dir='{run_dir}'", "compile.kernels='cpu'", "compile.mode='off'"])
    t = build_trainer(r)
    t.make_loader()
    try:
        t.apply_schedules()
        batch = {k: v for k, v in next(iter(t.loader)).items() if torch.is_tensor(v)}
        t.train_one(batch)
    finally:
        t.loader.close()
    print("STEP", t.step)
''')


def _build_wheel(tmp: Path) -> Path:
    """The wheel of a copy of the source tree (setuptools writes build/ and *.egg-info beside the sources)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.egg-info")
    for pkg in ("engine", "kernels"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=skip)
    out = tmp / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(out), str(src)], check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = out.glob("torchsae-*.whl")
    return wheel


def test_installed_wheel_runs_every_c_path(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "kernels").rglob("*.c"))
    assert sources and all(s in names for s in sources), f"C sources missing from the wheel: {set(sources) - set(names)}"

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, text=True, timeout=300)
    faces = tmp_path / "faces"
    write_synthetic_faceset(faces / "A", 2, size=128, face_type="wf", seed=1)
    write_synthetic_faceset(faces / "B", 2, size=128, face_type="wf", seed=2)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "TORCHSAE_"))}
    env.update(TORCHSAE_KERNELS="cpu", TORCHSAE_CACHE=str(tmp_path / "cache"))  # a fresh C build cache
    proc = subprocess.run([sys.executable, "-I", str(script), str(target), str(ROOT),
                           str(ROOT / "recipes" / "tests" / "tiny_df.toml"), str(faces / "A"), str(faces / "B"),
                           str(tmp_path / "run")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"the installed package failed:\n{out[-4000:]}"
    assert "STEP 1" in out, out[-4000:]
    for op in OPS:
        assert f"SOURCE {target}/kernels/{op}/{op}_cpu.c True" in out, out[-4000:]
        assert f"LOG torchsae.kernels {op}: cpu (requested)" in out, f"{op} did not report its C path:\n{out[-4000:]}"
    built = sorted(p.name.split("_")[0] for p in (tmp_path / "cache" / "kernels").glob("*.so"))
    assert built == ["dfl", "dssim", "warp"], built  # each C kernel built from the installed source
