"""Fuzz tests: hypothesis over the same oracles as the atheris harnesses in ``fuzz/``."""
