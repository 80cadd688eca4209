"""OCR through the ``tesseract`` binary (Debian package ``tesseract-ocr``), when it is installed.

No Python OCR stack and no model download: tesseract reads a PNG on stdin and
writes text on stdout. ``KB_TESSERACT`` names another binary (an empty value
or a missing file means: no OCR engine).
"""

from __future__ import annotations

import os
import shutil
import subprocess

from kb_base.errors import ExtractionError

OCR_TIMEOUT_SECONDS = 120
INSTALL_HINT = "install the Debian package tesseract-ocr (or point KB_TESSERACT at a tesseract binary)"


def tesseract_binary() -> str | None:
    configured = os.environ.get("KB_TESSERACT")
    if configured is not None:
        return configured if configured and os.access(configured, os.X_OK) else None
    return shutil.which("tesseract")


def ocr_available() -> bool:
    return tesseract_binary() is not None


def ocr_png(png: bytes, what: str) -> str:
    """The text tesseract reads in one PNG image; ExtractionError when it cannot run."""
    binary = tesseract_binary()
    if binary is None:
        raise ExtractionError(f"{what} holds only an image and no OCR engine is installed: {INSTALL_HINT}")
    try:
        done = subprocess.run([binary, "stdin", "stdout", "--psm", "3"], input=png, capture_output=True,
                              timeout=OCR_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExtractionError(f"OCR of {what} failed: {exc}") from exc
    if done.returncode != 0:
        reason = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
        raise ExtractionError(f"OCR of {what} failed (tesseract exit {done.returncode}): {reason[0]}")
    return done.stdout.decode("utf-8", "replace")
