"""Fuzzing harnesses (atheris) and their seed corpora; see ``fuzz/README.md``."""
