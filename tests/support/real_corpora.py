"""Real documentation sets the machine has, read in place (never copied into the repository).

Each family is one site generator, with the package that installs it: a test on a machine without it fails
with the package's name (tests/support/system-packages.txt lists the Debian ones ``make test`` installs).

- Sphinx: the Python 3.11 documentation (Debian ``python3.11-doc``)
- DocBook: the PostgreSQL 15 documentation (Debian ``postgresql-doc-15``)
- mdBook: The Rust Programming Language and Rust by Example, from rustup's ``rust-docs`` component, which the
  default rustup profile installs with every toolchain (the machines this project runs on have Rust by
  rustup); found through ``rustc --print sysroot``, then ``$RUSTUP_HOME`` / ``~/.rustup``
- PDF: the manuals Debian documentation packages install under /usr/share/doc (``libtasn1-doc``,
  ``shared-mime-info``)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SPHINX = Path("/usr/share/doc/python3.11/html")
DOCBOOK = Path("/usr/share/doc/postgresql-doc-15/html")
PDF_ROOT = Path("/usr/share/doc")


@dataclass(frozen=True)
class Family:
    name: str
    root: Path
    content_xpath: str  # the page's own main-content container: the tests' independent reference
    chrome: tuple[str, ...]  # text of the site's navigation, sidebar or footer, on every page of the site
    install: str  # what installs it


def rust_docs() -> Path:
    """The rust-docs HTML folder of the default toolchain (AssertionError naming the component when absent)."""
    candidates: list[Path] = []
    rustc = shutil.which("rustc")
    if rustc:
        done = subprocess.run([rustc, "--print", "sysroot"], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            candidates.append(Path(done.stdout.strip()) / "share/doc/rust/html")
    home = Path(os.environ.get("RUSTUP_HOME") or Path.home() / ".rustup")
    candidates += sorted(home.glob("toolchains/*/share/doc/rust/html"))
    for candidate in candidates:
        if (candidate / "book" / "index.html").is_file():
            return candidate
    raise AssertionError("no mdBook corpus: the tests read The Rust Programming Language from rustup's rust-docs "
                         "component (`rustup component add rust-docs`); looked in "
                         + (", ".join(map(str, candidates)) or "no rustc on PATH and no ~/.rustup"))


def families() -> dict[str, Family]:
    rust = rust_docs()
    return {
        "sphinx": Family("sphinx", SPHINX, "//*[@role='main']",
                         ("Report a Bug", "Show Source", "Previous topic", "Next topic", "This Page", "Created using"),
                         "Debian package python3.11-doc"),
        "docbook": Family("docbook", DOCBOOK, "//body", ("Prev", "Up", "Next", "Home"),
                          "Debian package postgresql-doc-15"),
        "mdbook": Family("mdbook", rust / "book", "//main",
                         ("Keyboard shortcuts", "navigate between chapters", "Ayu", "Coal", "Print this book"),
                         "rustup component rust-docs"),
        "mdbook-rbe": Family("mdbook-rbe", rust / "rust-by-example", "//main",
                             ("Keyboard shortcuts", "navigate between chapters", "Ayu", "Coal"),
                             "rustup component rust-docs"),
    }


def require(family: Family) -> Path:
    if not (family.root / "index.html").is_file():
        raise AssertionError(f"the {family.name} corpus is not on this machine ({family.root}): install the "
                             f"{family.install} (tests/support/system-packages.txt)")
    return family.root


def html_files(family: Family) -> list[Path]:
    return sorted(require(family).rglob("*.html"))


def sample(files: list[Path], count: int) -> list[Path]:
    """``count`` files spread evenly over the sorted list: the same sample on every run, every corner."""
    step = max(1, len(files) // count)
    return files[::step][:count]


def real_pdfs() -> list[Path]:
    pdfs = sorted(PDF_ROOT.rglob("*.pdf"))
    if not pdfs:
        raise AssertionError("no PDF manual under /usr/share/doc: install the Debian packages libtasn1-doc or "
                             "shared-mime-info (their manuals are the tests' real PDFs)")
    return pdfs
