"""How ``kb serve`` runs uvicorn: its connection settings, and a worker supervisor that says why a worker went.

Two uvicorn defaults close connections that clients are still using when a server is short of CPU:

- a keep-alive connection idle for ``timeout_keep_alive`` (uvicorn: 5 s) is closed. A client that sends its
  next request just as that happens sees the connection close with no answer (HTTP allows it, and clients
  retry, but only idempotent requests); and a load balancer in front with a longer idle timeout (60 s on
  the common ones) keeps reusing connections the server has closed. kb serve keeps them 75 s.
- under ``--workers N``, the supervisor pings every worker each half second and SIGKILLs one that does not
  answer within ``timeout_worker_healthcheck`` (uvicorn: 5 s), dropping every request on its connections.
  The answer needs the worker's GIL and a CPU: a loaded worker on a busy 2-core machine is not a hung one.
  kb serve waits 30 s.

uvicorn logs a worker's end at INFO, as "Child process died", whether it crashed, was killed by the kernel or
was killed by the supervisor itself. ``WatchedWorkers`` logs it at WARNING (visible at kb serve's default
levels) with the exit status or signal, or the missed health check.
"""

from __future__ import annotations

import inspect
import logging
import signal
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess

log = logging.getLogger("kb.serve")

APP = "api.app:create_app"  # imported by each worker (uvicorn's factory)
KEEP_ALIVE_SECONDS = 75
HEALTHCHECK_SECONDS = 30


def exit_description(code: int | None) -> str:
    if code is None:
        return "ended (exit status unknown)"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class WatchedWorkers(Multiprocess):
    """uvicorn's supervisor, logging why each worker it replaces went (see the module docstring)."""

    def keep_subprocess_alive(self) -> None:
        before = [(process, process.process.is_alive()) for process in self.processes]
        super().keep_subprocess_alive()
        replaced = [(process, alive) for process, alive in before if process not in self.processes]
        for process, was_alive in replaced:
            code = process.exitcode
            if was_alive and code == -signal.SIGKILL:  # alive a moment ago, SIGKILLed by super(): the health check
                why = (f"did not answer the supervisor's health check within {self.config.timeout_worker_healthcheck}"
                       " s (hung, or starved of CPU) and was killed")
            else:
                why = exit_description(code)
            log.warning("kb serve: worker process %s %s; requests in flight on its connections were lost and those "
                        "connections closed; a new worker replaces it", process.pid, why,
                        extra={"fields": {"worker_pid": process.pid, "exit_code": code}})


def _config_options(keep_alive: int, healthcheck: int) -> dict[str, Any]:
    options: dict[str, Any] = {"timeout_keep_alive": keep_alive}
    # uvicorn < 0.36 has a fixed health check (and no setting for it); pyproject allows >= 0.30
    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.Config).parameters:
        options["timeout_worker_healthcheck"] = healthcheck
    return options


def run(*, host: str, port: int, workers: int, log_level: str, keep_alive: int = KEEP_ALIVE_SECONDS,
        healthcheck: int = HEALTHCHECK_SECONDS) -> None:
    """What ``uvicorn.run(APP, factory=True, ...)`` does, with ``WatchedWorkers`` as the supervisor."""
    config = uvicorn.Config(APP, factory=True, host=host, port=port, workers=workers,
                            log_level=log_level, log_config=None, timeout_graceful_shutdown=30,
                            **_config_options(keep_alive, healthcheck))
    server = uvicorn.Server(config)
    try:
        if config.workers <= 1:
            server.run()
        elif "target" in inspect.signature(Multiprocess).parameters:  # uvicorn < 0.36 passed the server's run
            WatchedWorkers(config, target=server.run, sockets=[config.bind_socket()]).run()  # type: ignore[call-arg]
        else:
            WatchedWorkers(config, sockets=[config.bind_socket()]).run()
    except KeyboardInterrupt:
        pass
    if config.workers <= 1 and not server.started:
        raise SystemExit(STARTUP_FAILURE)
