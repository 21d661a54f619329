"""Markers the real-executor tests use beyond those in pyproject.toml (slow, mpi, gpu), and slow tests opt-in."""
import os

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "torch: needs torch with torch.distributed (gloo on CPU, NCCL on GPU)")


def pytest_collection_modifyitems(config, items):
    # `slow` tests take minutes: they run only when asked for, with a marker
    # expression (`pytest -m slow`) or DISTSIM_SLOW=1, so a plain `pytest`
    # (and CI) does not spend its time on them.
    if config.getoption("markexpr") or os.environ.get("DISTSIM_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with `pytest -m slow` or DISTSIM_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
