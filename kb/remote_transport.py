"""HTTP transport of the REST client: retries on idempotent calls, server errors back as ``kb.errors`` classes."""

from __future__ import annotations

import shutil
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

import httpx

from kb_base import errors

_IDEMPOTENT = ("GET", "PUT", "DELETE")


def _error_classes() -> dict[str, type[errors.KBError]]:
    found: dict[str, type[errors.KBError]] = {}
    pending: list[type[errors.KBError]] = [errors.KBError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    return found


class RemoteAuthError(errors.KBError):
    http_status = 401
    code = "unauthenticated"


class RemoteForbiddenError(errors.KBError):
    http_status = 403
    code = "forbidden"


class Transport:
    def __init__(self, url: str, api_key: str | None, timeout: float = 60.0, retries: int = 3) -> None:
        if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
            raise errors.InvalidInputError(f"url must be the kb service's http:// or https:// address, got {url!r}")
        if api_key and (not isinstance(api_key, str) or not api_key.isascii() or not api_key.isprintable()):
            # an HTTP header holds printable ASCII only: a pasted newline, space or typographic quote would
            # fail in the HTTP library, or look like an unreachable service
            raise errors.InvalidInputError("api_key must be a printable ASCII string (kb's keys look like "
                                           "kb_...); check it for a pasted line break or a typographic character")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base = url.rstrip("/")
        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=timeout)
        self.retries = retries
        self.classes = _error_classes()
        self.classes.update({"unauthenticated": RemoteAuthError, "forbidden": RemoteForbiddenError})
        self._scratch: Path | None = None

    def scratch(self) -> Path:
        """This client's own temporary directory (downloaded copies of folder files), removed by ``close()``
        or, failing that, when the transport is collected or the interpreter exits."""
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="kb-remote-"))
            weakref.finalize(self, shutil.rmtree, self._scratch, True)
        return self._scratch

    def close(self) -> None:
        self.http.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            request = self.http.build_request(method, path, **kwargs)
        except (UnicodeEncodeError, ValueError, TypeError) as exc:
            # the callers check what users give (kb.remote_checks); this keeps anything they miss a typed error
            raise errors.InvalidInputError(f"{method} {path[:200]}: the request cannot be encoded: {exc}") from exc
        attempts = self.retries + 1 if method in _IDEMPOTENT else 1
        for attempt in range(attempts):
            try:
                response = self.http.send(request)
            except httpx.TransportError as exc:
                if attempt + 1 == attempts:
                    raise errors.StoreUnavailableError(f"kb service at {self.base} unreachable: {exc}") from exc
                time.sleep(0.2 * 2**attempt)
                continue
            if response.status_code == 503 and attempt + 1 < attempts:
                time.sleep(0.2 * 2**attempt)
                continue
            if response.status_code >= 400:
                self.raise_for(response)
            return response
        raise AssertionError("unreachable")

    def raise_for(self, response: httpx.Response) -> None:
        """Raise the ``kb.errors`` class of an error response (its JSON ``error.code``)."""
        try:
            error = response.json()["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "internal_error", f"HTTP {response.status_code}: {response.text[:300]}"
        raise self.error(code, message)

    def error(self, code: str, message: str) -> errors.KBError:
        """The ``kb.errors`` instance for an error code the server sent (in an error body or a failed job)."""
        cls = self.classes.get(code, errors.KBError)
        try:
            return cls(message)
        except TypeError:  # a class that carries more than a message (a report): its base in kb_base.errors
            return next(c for c in cls.__mro__ if c.__module__ == errors.__name__)(message)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        return None if response.status_code == 204 else response.json()
