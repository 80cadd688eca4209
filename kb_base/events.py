"""Thin hooks through which kb reports what it does to observers (the REST service's Prometheus metrics).

kb's layers cannot know about the service (``api/`` sits above them), so they emit named events and an
observer subscribes. With no observer an event costs one list check. Events and their fields:

- ``search``: search_type, store, seconds
- ``embedding``: model, hits, misses (texts served by the cache / sent to the model)
- ``model_call``: model, texts, seconds (one batch sent to the embedding model)
- ``commit``: store, kb_id, seconds, ok
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Listener = Callable[[str, dict[str, Any]], None]
_listeners: list[Listener] = []


def subscribe(listener: Listener) -> None:
    if listener not in _listeners:
        _listeners.append(listener)


def unsubscribe(listener: Listener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def observed() -> bool:
    """Whether anyone listens: hot paths skip preparing an event's fields when nobody does."""
    return bool(_listeners)


def emit(event: str, **fields: Any) -> None:
    if not _listeners:
        return
    for listener in _listeners:
        try:
            listener(event, fields)
        except Exception:  # an observer's bug must never fail a search or a commit
            log.exception("event listener failed on %s", event)
