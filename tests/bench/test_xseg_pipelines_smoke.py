"""Smoke test of bench/pipeline/xseg_pipelines.py (the tool that decided XSeg's CPU pipeline) on tiny
shapes, so it cannot rot between the runs quoted in bench/README.md. Runs in a few seconds."""

from __future__ import annotations

import re
import sys

from bench.pipeline import xseg_pipelines


def test_every_design_reports_its_figures(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["xseg_pipelines", "--res", "64", "--batch", "2", "--faces", "4",
                                      "--rounds", "1", "--steps", "1", "--blocks", "1", "--base-ch", "8",
                                      "--designs", "dfl:0,device:0"])
    xseg_pipelines.main()
    out = capsys.readouterr().out
    for name in ("dfl", "device loader side", "device augment"):
        assert re.search(rf"augment res 64 b2: {name}\s+\d+\.\d ms/batch", out), out
    for design in ("dfl:0", "device:0"):
        m = re.search(rf"{design}: loop (\d+\.\d+) s/step, step (\d+\.\d+) s", out)
        assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0, out
    assert "(1 steps)" in out
