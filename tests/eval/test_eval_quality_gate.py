"""bench/harness.py's quality gate (suite "quality"): a metric moving the wrong way beyond its tolerance is a
regression, within it or the right way is not."""

from __future__ import annotations

from bench import harness


def _row(**quality):
    return {"name": "bench/quality/test_quality_bench.py::test_quickstart_quality[reference]",
            "group": "quality quickstart 1000 steps", "provider": "reference",
            "extra": {"quality": quality, "quality_gate": {"identity_retrieval": ["higher", 0.15],
                                                            "recon_dssim_src": ["lower", 0.005]}}}


def test_quality_regressions_follow_direction_and_tolerance(capsys):
    old = _row(identity_retrieval=0.71, recon_dssim_src=0.080)
    prev = {old["name"]: old}
    assert harness.quality_regressions([_row(identity_retrieval=0.58, recon_dssim_src=0.084)], prev) == []
    assert harness.quality_regressions([_row(identity_retrieval=1.0, recon_dssim_src=0.05)], prev) == []
    bad = harness.quality_regressions([_row(identity_retrieval=0.43, recon_dssim_src=0.090)], prev)
    assert len(bad) == 2 and "identity_retrieval 0.71 -> 0.43" in bad[0] and "recon_dssim_src" in bad[1]
    assert harness.quality_regressions([_row(identity_retrieval=0.1, recon_dssim_src=0.2)], {}) == []  # first run
    assert "REGRESSION" in capsys.readouterr().out
