"""Benchmark suites (bench/<suite>/test_*.py, pytest-benchmark) and their harness: `python -m bench`."""
