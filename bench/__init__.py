"""Serving and quality benchmarks."""
