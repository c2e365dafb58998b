"""Benchmarks, run as scripts (``.venv/bin/python bench/throughput.py``); a package only so
that tests/unit/test_unit_bench.py can import their pure helpers."""
