"""One intra-op thread for these tiny models: on a shared 2-core machine OpenMP's spin-waiting costs far
more than the work (measured 0.13 s vs 0.005 s CPU per tiny forward)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
