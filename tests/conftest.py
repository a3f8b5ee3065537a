"""Shared test configuration: integration tests need root and the real peers."""

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="integration tests start zfs-fuse, sshd and tgtd: they need root")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)
