"""Benchmark harness (`python -m benchmarks.bench`); run from a source checkout, not part of the library."""
