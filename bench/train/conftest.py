"""Suite "train": thread count from TORCHSAE_BENCH_TRAIN_THREADS, and the ours-vs-DFL table at the end."""

from __future__ import annotations

import os

import torch

from bench.train.common import CONV_RESULTS, RESULTS, format_conv_table, format_table


def pytest_configure(config):
    threads = os.environ.get("TORCHSAE_BENCH_TRAIN_THREADS")
    if threads:
        torch.set_num_threads(int(threads))


def pytest_terminal_summary(terminalreporter):
    for text in (format_table(RESULTS), format_conv_table(CONV_RESULTS)):
        if text:
            terminalreporter.write_line("")
            for line in text.splitlines():
                terminalreporter.write_line(line)
