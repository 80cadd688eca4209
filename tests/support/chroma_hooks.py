"""Interleavings forced on a Chroma store's client: another thread's work run at a chosen point of a read."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest


def before_first_call(client: Any, monkeypatch: pytest.MonkeyPatch, action: Callable[[], None],
                      methods: tuple[str, ...] | None = ("query", "get")) -> list[str]:
    """Before the calling thread's first call of one of ``methods`` (any method when None) on ``client`` (a
    store's ``chroma``: its snapshot already taken by then), run ``action`` on another thread and wait for it.
    Returns the methods of the calling thread's calls, in order, as they happen."""
    real = client.call
    reader, seen, done = threading.get_ident(), [], threading.Event()

    def call(name: str, method: str, **kwargs: Any) -> Any:
        if threading.get_ident() == reader:
            seen.append(method)
            if (methods is None or method in methods) and not done.is_set():
                done.set()
                other = threading.Thread(target=action)
                other.start()
                other.join()
        return real(name, method, **kwargs)

    monkeypatch.setattr(client, "call", call)
    return seen
