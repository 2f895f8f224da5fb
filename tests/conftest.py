"""Shared fixtures. The embedded model is loaded once per test session: loading it takes seconds on CPU."""

from __future__ import annotations

import asyncio
import functools
import time

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


class LoopTicks:
    """Counts 10 ms ticks of the event loop while the `async with` body runs: a call that blocked the loop
    for the seconds the model works would let it tick (almost) never."""

    async def __aenter__(self) -> LoopTicks:
        self.ticks, self.seconds = 0, 0.0
        self._start = time.perf_counter()
        self._task = asyncio.create_task(self._tick())
        return self

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            self.ticks += 1

    async def __aexit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._start
        self._task.cancel()

    def assert_loop_was_free(self) -> None:
        blocked = f"{self.ticks} ticks in {self.seconds:.1f} s: the loop was blocked"
        assert self.ticks > self.seconds * 100 * 0.3, blocked

