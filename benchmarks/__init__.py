"""Benchmarks: each prints its figures and ratios against a reference measured in the same run (see each module)."""
