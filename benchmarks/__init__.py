"""Benchmarks comparing jaxgmm with numpy and scikit-learn (see benchmarks/README.md)."""
