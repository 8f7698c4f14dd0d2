"""Benchmarks: scripts that print JSON figures (never timed tests)."""
