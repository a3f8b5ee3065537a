"""Registered under ``lunlist-broken`` to show how esxdr treats a module that is no backend."""

STACK = "lunlist-broken"


def parse(files):  # no render, no identity_problems
    raise NotImplementedError
