"""Async iteration over the engine's blocking generators, shared by the integrations."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any


async def iterate_in_thread(make_iterator: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
    """Run a blocking iterator in one worker thread and hand its items to the event loop.

    One thread for the whole iteration, not one per item: the engine holds its lock inside the generator,
    and a lock must be released by the thread that took it. Stopping early closes the iterator in that
    thread, which stops the generation.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stopped = threading.Event()
    done = object()

    def put(item: Any, exc: BaseException | None = None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (item, exc))
        except RuntimeError:
            stopped.set()  # the loop is gone: nobody is listening any more

    def work() -> None:
        try:
            iterator = make_iterator()
            try:
                for item in iterator:
                    if stopped.is_set():
                        break
                    put(item)
            finally:
                close = getattr(iterator, "close", None)
                if close:
                    close()
            put(done)
        except BaseException as exc:  # handed to the consumer and raised there
            put(done, exc)

    worker = threading.Thread(target=work, name="longheads-stream", daemon=True)
    worker.start()
    try:
        while True:
            item, exc = await queue.get()
            if item is done:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stopped.set()
        await asyncio.to_thread(worker.join)
