"""Issue 10's attacks replayed against the real daemon, each asserting the victim's outcome.

Tools shared with ``bench.abuse`` live in :mod:`tests.abuse.harness`; the daemon and its
clients come from :mod:`tests.robustness.conftest` (``running_daemon``). One module per
attack family, each attack bounded in count and time, on loopback only.
"""
