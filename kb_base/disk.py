"""A full disk, recognised wherever it surfaces (OSError ENOSPC/EDQUOT, SQLite's SQLITE_FULL, faiss' write
errors) and reported as one typed error, ``DiskFullError`` (507 over REST)."""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from typing import Any, TypeVar

from kb_base.errors import DiskFullError

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_FULL_MESSAGES = ("database or disk is full", "No space left on device", "Disk quota exceeded")

F = TypeVar("F", bound=Callable[..., Any])


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from, says the disk is full."""
    seen = 0
    while exc is not None and seen < 6:
        if isinstance(exc, DiskFullError):
            return True
        if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
            return True
        if any(message in str(exc) for message in _FULL_MESSAGES):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def disk_full_error(exc: BaseException, what: str) -> DiskFullError:
    if isinstance(exc, DiskFullError):
        return exc
    return DiskFullError(f"{what} failed: the disk is full ({exc}); nothing of it was written and the previous "
                         "state is intact; free some space and try again")


def reports_disk_full(what: str) -> Callable[[F], F]:
    """Decorator: a full disk inside the call surfaces as DiskFullError naming ``what``."""
    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except DiskFullError:
                raise
            except Exception as exc:
                if is_disk_full(exc):
                    raise disk_full_error(exc, what) from exc
                raise
        return wrapper  # type: ignore[return-value]
    return decorate
