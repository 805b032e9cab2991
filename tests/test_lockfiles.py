"""The pip lock (verified), flake.nix and conda-lock.yml (provided, unverified) pin the same packages."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[_norm(name)] = version
    return pins


def flake_pins() -> dict[str, str]:
    text = (ROOT / "flake.nix").read_text()
    block = text.split("# BEGIN PINS", 1)[1].split("# END PINS", 1)[0]
    return {_norm(n): v for n, v in re.findall(r'name = "([^"]+)"; version = "([^"]+)";', block)}


def conda_pins() -> dict[str, str]:
    pins, name = {}, None
    for line in (ROOT / "conda-lock.yml").read_text().splitlines():
        if m := re.match(r"^- name: (\S+)", line):
            name = m.group(1)
        elif (m := re.match(r"^  version: (\S+)", line)) and name:
            pins[_norm(name)] = m.group(1)
            name = None
        elif re.match(r"^  manager: conda", line) and name is None:
            pass
    return pins


def test_three_locks_agree_on_names_and_versions():
    pip = pip_lock()
    assert "torch" in pip and pip["torch"] == "2.13.0"
    assert flake_pins() == pip
    conda = conda_pins()
    assert conda.pop("python").startswith("3.11")
    assert conda == pip


def test_lock_covers_the_designed_dependencies():
    pip = pip_lock()
    for name in ["torch", "numpy", "opencv-python-headless", "pillow", "attrs", "onnx", "onnxruntime", "onnxsim",
                 "hypothesis", "pytest-benchmark", "face-alignment", "tqdm", "tensorboard"]:
        assert name in pip, name
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", v) for v in pip.values())


def test_flake_hashes_are_sri_sha256():
    block = (ROOT / "flake.nix").read_text().split("# BEGIN PINS", 1)[1].split("# END PINS", 1)[0]
    hashes = re.findall(r'hash = "([^"]+)"', block)
    assert len(hashes) == len(pip_lock())
    assert all(re.fullmatch(r"sha256-[A-Za-z0-9+/]{43}=", h) for h in hashes)
