"""Shared fixtures for benchmark suites (conventions: bench/README.md)."""

from __future__ import annotations

import pytest


@pytest.fixture
def tag(benchmark):
    """tag(group, provider, items=None, **extra) -> benchmark, with the harness's fields filled in.

    group: the figure being compared ("dssim fwd+bwd res256 w22+11 b8"); provider: "reference" (the
    baseline), "fast", or a third-party name; items: samples per call, for items/s.
    """

    def _tag(group: str, provider: str, items: int | None = None, **extra):
        benchmark.group = group
        benchmark.extra_info["provider"] = provider
        if items:
            benchmark.extra_info["items"] = items
        benchmark.extra_info.update(extra)
        return benchmark

    return _tag
