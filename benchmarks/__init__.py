"""Benchmarks of autocontinue against the real local engine (``python -m benchmarks.<name>`` from the repo root)."""
