"""The web console: static HTML, CSS and vanilla JavaScript from ``api/console/``, served at ``/``.

No build step, no CDN, nothing fetched from elsewhere: the pages call the same REST API as every client, with
the API key the person signs in with (kept in the tab's sessionStorage, sent as a Bearer header). The files
hold no data, so they are served without a key; every datum behind them needs one (unless ``KB_AUTH=off``).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

CONSOLE_DIR = Path(__file__).resolve().parent / "console"
# The shell must not be cached across upgrades (it names the scripts); the scripts are small.
NO_CACHE = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                                       "script-src 'self'; connect-src 'self'; frame-ancestors 'none'"}


def mount_console(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def console_index() -> FileResponse:
        return FileResponse(CONSOLE_DIR / "index.html", media_type="text/html", headers=NO_CACHE)

    app.mount("/console", StaticFiles(directory=CONSOLE_DIR), name="console")
