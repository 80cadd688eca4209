"""Office documents and HTML pages printed to PDF, for page screenshots: headless LibreOffice and Chromium.

Both tools are found on PATH (``soffice``, ``chromium``) unless ``KB_SOFFICE`` / ``KB_CHROMIUM`` name one;
an override naming a missing file means "not installed", which is how the tests take a tool away.

LibreOffice starts slowly (seconds), so ``OfficeConverter`` hands it a batch of files in one
``soffice --convert-to pdf`` call: one process converts them in order. The timeout is per file: the
clock restarts each time a PDF appears, and when one file takes longer the process tree is killed, that
file is reported as timed out and the rest of the batch goes to a fresh process; a file LibreOffice cannot
open is reported on its own. Each converter has a private profile (``-env:UserInstallation``) in its
temporary directory: two syncs, or two test processes, never share LibreOffice's lock and settings.

Chromium prints one page per process (``--print-to-pdf``), in a private profile, with every request to
the network blocked: host names resolve to nothing and other requests go to a proxy that does not exist.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

STARTUP_SECONDS = 30.0  # allowed on top of the first file's timeout: LibreOffice's start on a busy machine
POLL_SECONDS = 0.1
OFFICE_MISSING = ("screenshots skipped: LibreOffice not found (install Debian's libreoffice-core-nogui with "
                  "libreoffice-writer-nogui and libreoffice-impress-nogui, or set KB_SOFFICE to its soffice); "
                  "the text is indexed")
CHROMIUM_MISSING = ("screenshots skipped: Chromium not found (install Debian's chromium, or set KB_CHROMIUM to a "
                    "Chromium or Chrome binary); the text is indexed")


OfficeFile = tuple[str, str, bytes]  # a key the caller knows the file by, its suffix (".docx"), its content


def find_tool(variable: str, names: tuple[str, ...]) -> str | None:
    """The executable ``$variable`` names when it is set (None when it is missing), else the first of
    ``names`` on PATH."""
    override = os.environ.get(variable)
    if override:
        return shutil.which(override)
    return next((found for found in map(shutil.which, names) if found), None)


def find_soffice() -> str | None:
    return find_tool("KB_SOFFICE", ("soffice", "libreoffice"))


def find_chromium() -> str | None:
    return find_tool("KB_CHROMIUM", ("chromium", "chromium-browser", "google-chrome"))


def _kill_tree(process: subprocess.Popen[bytes]) -> None:
    """The process and everything it started (soffice.bin under the soffice script, Chromium's helpers); it
    was started in a session of its own, so its process group holds exactly those."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
    # the others die as their signal is delivered, a moment later than this one's reaping (a CI run saw
    # soffice.bin still there after the wait): wait for the group to be gone, briefly (its zombies are init's)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.01)


def _complete_pdf(path: Path) -> bool:
    """A PDF written to the end (a killed converter may leave half of one)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 1024))
            return b"%%EOF" in f.read()
    except OSError:
        return False


def _errors(log: Path) -> str:
    """LibreOffice's own reasons ("source file could not be loaded"), once each."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    reasons = dict.fromkeys(line.split("Error:", 1)[1].strip() for line in lines if "Error:" in line)
    return "; ".join(reason for reason in reasons if reason)[:300]


def _tail(path: Path, limit: int = 300) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    # the noise both tools print on a machine without Java or a D-Bus session is not the reason
    lines = [line for line in text.splitlines() if line.strip() and "javaldx" not in line and "dbus" not in line]
    return " ".join(lines)[-limit:]


class OfficeConverter:
    """DOCX and PPTX files to PDF with headless LibreOffice, a batch per process (see the module doc).
    ``close()`` removes its temporary directory."""

    def __init__(self, soffice: str, timeout: float, startup: float = STARTUP_SECONDS) -> None:
        self.soffice, self.timeout, self.startup = soffice, timeout, startup
        self.workdir = Path(tempfile.mkdtemp(prefix="kb-office-"))
        self.profile = (self.workdir / "profile").as_uri()
        self._runs = 0

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def convert(self, files: list[OfficeFile]) -> dict[str, bytes | str]:
        """(key, suffix, content) per file -> key: its PDF, or why there is none."""
        results: dict[str, bytes | str] = {}
        pending = list(files)
        while pending:
            pending = self._run(pending, results)
        return results

    def _run(self, batch: list[OfficeFile], results: dict[str, bytes | str]) -> list[OfficeFile]:
        """One LibreOffice process over ``batch``; returns the files left when it had to be killed."""
        self._runs += 1
        source, target = self.workdir / f"in-{self._runs}", self.workdir / f"out-{self._runs}"
        source.mkdir()
        target.mkdir()
        # numbered names: two files called report.docx in different folders must not share an output
        inputs = []
        for index, (_, suffix, data) in enumerate(batch):
            path = source / f"{index:05d}{suffix}"
            path.write_bytes(data)
            inputs.append(str(path))
        outputs = [target / f"{index:05d}.pdf" for index in range(len(batch))]
        log = self.workdir / f"log-{self._runs}.txt"
        command = [self.soffice, f"-env:UserInstallation={self.profile}", "--headless", "--invisible",
                   "--nologo", "--norestore", "--nolockcheck", "--nodefault", "--convert-to", "pdf",
                   "--outdir", str(target), *inputs]
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + self.startup + self.timeout
        seen = 0
        killed = False
        while process.poll() is None:
            present = next((i for i in range(len(outputs) - 1, seen - 1, -1) if outputs[i].exists()), -1) + 1
            if present > seen:  # a new PDF has appeared: the next file's clock starts
                seen, deadline = present, time.monotonic() + self.timeout
            if time.monotonic() > deadline:
                killed = True
                break
            time.sleep(POLL_SECONDS)
        _kill_tree(process)  # on a timeout; else the helpers a finished LibreOffice may leave behind
        left: list[OfficeFile] = []
        why = _errors(log)
        for index, ((key, _, _), output) in enumerate(zip(batch, outputs, strict=True)):
            if _complete_pdf(output):
                results[key] = output.read_bytes()
            elif killed and not left and key not in results:
                results[key] = f"LibreOffice took more than {self.timeout:g}s to convert it (stopped)"
                left = batch[index + 1:]
            elif not killed:
                results[key] = "LibreOffice could not convert it" + (f": {why}" if why else "")
        shutil.rmtree(source, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        return [item for item in left if item[0] not in results]


def print_html_to_pdf(chromium: str, page: Path, timeout: float) -> bytes | str:
    """The page (a local file, so its own stylesheets and images load) as Chromium prints it; a string says
    why there is no PDF."""
    with tempfile.TemporaryDirectory(prefix="kb-chromium-") as workdir:
        output = Path(workdir) / "page.pdf"
        log = Path(workdir) / "log.txt"
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={workdir}/profile",
                   "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
                   "--disable-background-networking", "--disable-component-update", "--mute-audio",
                   # nothing leaves the page: no name resolves, and any other request (even to this machine)
                   # meets a proxy that is not there
                   "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=socks5://127.0.0.1:9",
                   "--proxy-bypass-list=<-loopback>",  # loopback too: Chromium would bypass the proxy for it
                   "--no-pdf-header-footer", f"--print-to-pdf={output}", page.resolve().as_uri()]
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       cwd=workdir, start_new_session=True)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return f"Chromium took more than {timeout:g}s to print the page (stopped)"
            finally:
                _kill_tree(process)  # also the helpers a finished Chromium may leave behind
        if not _complete_pdf(output):
            why = _tail(log)
            return f"Chromium could not print the page (exit status {process.returncode})" + \
                (f": {why}" if why else "")
        return output.read_bytes()
