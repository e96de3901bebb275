"""Benchmarks. Run them as modules, e.g. ``python -m bench.api --help``."""
