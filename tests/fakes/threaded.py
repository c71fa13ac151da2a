"""An asyncio server run from its own thread, so synchronous test code can drive it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable


def start_loop_thread(serve: Callable[[], Awaitable[str]], *,
                      name: str) -> tuple[asyncio.AbstractEventLoop, threading.Thread, str]:
    """Run `serve()` (which starts listening and returns the base URL) on a new event loop in a
    daemon thread that keeps the loop running; RuntimeError if it did not start in 10 s."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    outcome: list[str | BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            outcome.append(loop.run_until_complete(serve()))
        except BaseException as exc:
            outcome.append(exc)
            return
        finally:
            ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    if not ready.wait(10) or not isinstance(outcome[0], str):
        stop_loop_thread(loop, thread)
        cause = outcome[0] if outcome and isinstance(outcome[0], BaseException) else None
        raise RuntimeError(f"{name} failed to start") from cause
    return loop, thread, outcome[0]


def stop_loop_thread(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    """Stop the loop, join its thread and close the loop."""
    if not loop.is_closed():
        loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    if not thread.is_alive() and not loop.is_closed():
        loop.close()
