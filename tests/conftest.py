"""Shared fixtures. The embedded model is loaded once per test session: loading it takes seconds on CPU."""

from __future__ import annotations

import functools

import pytest


@functools.cache
def embedded_engine():
    """The real engine with the embedded SmolLM2-135M-Instruct, on CPU, loaded once per process.

    A plain function as well as a fixture: the langchain-tests suites build their models from class
    properties, which cannot ask for fixtures.
    """
    import longheads

    return longheads.load(device="cpu")


@pytest.fixture(scope="session")
def engine():
    return embedded_engine()
