"""Helpers shared by the adapters' reliability suites."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

TIMEOUT = 60  # seconds; a deadlock fails the test instead of hanging the run
SHARED_PASS_TOLERANCE = 1e-6
"""Concurrent calls share forward passes (bge_icl.scheduler), so a row may be padded beside other calls' rows: the
guarantee is a solo call's vectors within 1e-6 in float32 (docs/core.md), bit for bit only for a call alone."""
ODD_TEXTS = ["", "   ", "\t\n ", "nul\x00byte", "ctrl\x07\x1b\x7f", "😀🚀", "שלום עולם", "مرحبا", "a {0} b }{"]


def assert_unit(vectors: Any) -> None:
    """Every vector is finite and has length 1."""
    array = np.asarray(vectors)
    assert np.isfinite(array).all()
    np.testing.assert_allclose(np.linalg.norm(array, axis=-1), 1.0, atol=1e-5)


def lock_is_free(lock: Any) -> bool:
    """Try the (reentrant) model lock from another thread, where holding it in this one would show."""

    def probe() -> bool:
        if lock.acquire(blocking=False):
            lock.release()
            return True
        return False

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(probe).result(timeout=TIMEOUT)


class FailOnce:
    """Replace the model's forward with one that raises on its ``nth`` call, then runs the real one."""

    def __init__(self, model: Any, nth: int) -> None:
        self.model, self.nth, self.calls, self.real = model, nth, 0, model.forward

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        @functools.wraps(self.real)  # keeps the real signature
        def forward(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == self.nth:
                raise RuntimeError("boom: simulated kernel failure")
            return self.real(*args, **kwargs)

        monkeypatch.setattr(self.model, "forward", forward)


def assert_same_vectors(got: Any, expected: Any) -> None:
    """Nested lists (or arrays) of vectors agree within :data:`SHARED_PASS_TOLERANCE`, element for element."""
    def flat(results: Any) -> np.ndarray:
        return np.concatenate([np.asarray(r, dtype=np.float64).reshape(-1) for r in results])

    assert len(got) == len(expected)
    np.testing.assert_allclose(flat(got), flat(expected), rtol=0, atol=SHARED_PASS_TOLERANCE)


async def passes_after_cancelling(embedder: Any, start: Any) -> int:
    """Forward passes of ``embedder``'s model (each slowed to 20 ms) in a task ``start()`` makes, cancelled once the
    first pass runs; awaits the cancellation, then 0.2 s more (10 passes' time, had the call gone on)."""
    passes: list[int] = []
    hook = embedder.replicas[0].model.embed_tokens.register_forward_pre_hook(
        lambda module, args: passes.append(0) or time.sleep(0.02))  # fmt: skip
    try:
        task = asyncio.create_task(start())
        while not passes:
            await asyncio.sleep(0.002)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.2)
    finally:
        hook.remove()
    return len(passes)


async def cancel_mid_pass(model: Any, monkeypatch: pytest.MonkeyPatch, call: Callable[[], Awaitable[Any]]) -> None:
    """Start ``call`` as a task, cancel it while ``model``'s forward pass runs (held until then), then let the
    abandoned pass finish: the next call must find the model free."""
    real, entered, release = model.forward, threading.Event(), threading.Event()

    @functools.wraps(real)
    def gated(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(TIMEOUT)  # hold the model lock until the task has been cancelled
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "forward", gated)
    task = asyncio.create_task(call())
    assert await asyncio.to_thread(entered.wait, TIMEOUT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    monkeypatch.setattr(model, "forward", real)
    release.set()  # the abandoned worker thread finishes its pass and releases the lock
