"""Shared test configuration: integration tests need root and the real peers."""

import os

import pytest
from zfs_fuse_guard import watch


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="integration tests start zfs-fuse, sshd and tgtd: they need root")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    # integration tests arm it per run themselves (tests/integration/conftest.py may run one twice)
    w = None if "integration" in item.keywords else watch(item)
    try:
        yield
    finally:
        if w is not None:
            w.cancel()
