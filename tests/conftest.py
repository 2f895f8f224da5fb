"""Shared fixtures. The embedded model is loaded once per test session: loading it takes seconds on CPU."""

from __future__ import annotations

import asyncio
import functools
import socket
from typing import Any

import pytest


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


class LoopTicks:
    """Counts the event loop's turns (every 10 ms at most) while the `async with` body runs, and those it took while
    the engine was at work in another thread (its lock held elsewhere). A call that ran the model on the loop's own
    thread would leave the loop no turn while the model works."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.ticks = self.busy_ticks = 0

    async def __aenter__(self) -> LoopTicks:
        self._task = asyncio.create_task(self._tick())
        return self

    async def _tick(self) -> None:
        lock = self.engine._lock  # held while the engine encodes and generates: one call at a time
        while True:
            await asyncio.sleep(0.01)
            self.ticks += 1
            if lock.acquire(blocking=False):
                lock.release()
            else:
                self.busy_ticks += 1

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()

    def assert_loop_was_free(self) -> None:
        assert self.busy_ticks >= 3, f"{self.ticks} turns of the loop, {self.busy_ticks} while the engine worked"
