"""Fuzzing harnesses (atheris) and their seed corpora; see ``fuzz/README.md``.

The harness modules are imported in two ways: run as ``__main__`` by libFuzzer, where the
code under test must be instrumented for coverage, and imported by ``make_corpus.py`` and
the hypothesis tests, where atheris may not even be installed. :func:`instrumented` gives
each harness one ``with`` block for its imports that serves both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any


def instrumented(fuzzing: bool, include: Sequence[str]) -> contextlib.AbstractContextManager[Any]:
    """Instrument the modules under ``include`` as they are imported, when ``fuzzing``.

    Only the packages under test are instrumented: ``atheris.instrument_all()`` rewrites
    every loaded function (Twisted included, some 10,000 here), which takes 15 to 50 s
    at start-up, longer than a CI fuzzing slot.
    """
    if not fuzzing:
        return contextlib.nullcontext()
    import atheris

    return atheris.instrument_imports(include=list(include))
