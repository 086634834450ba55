"""Benchmarks behind `aosk bench`; results go to docs/benchmarks.md."""
