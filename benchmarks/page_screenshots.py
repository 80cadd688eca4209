"""``python -m benchmarks.page_screenshots [--files 8] [--out page_screenshots.json]``: what Office and HTML
screenshots cost, and what converting a batch of Office files per LibreOffice process saves.

Office: ``--files`` generated DOCX files (python-docx, three pages each) printed to PDF by headless LibreOffice,
one process per file (what a converter that is not reused pays) beside one process for the whole batch (what
``writers.screenshots`` does, up to eight files a process); seconds per file and the ratio. HTML: real pages of
Python's documentation (python3.11-doc, read in place) printed by headless Chromium: seconds per file and
printed pages. Then the PNG rendering of those PDFs at 72 dpi, pages per second. Prints the CPU's flags and
the load average beside the figures: on a shared machine they move with the load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.suite import cpu_flags
from writers.extract.pdf import pdf_page_texts, render_pdf_pages
from writers.extract.to_pdf import OfficeConverter, find_chromium, find_soffice, print_html_to_pdf

HTML_PAGES = ("bisect.html", "graphlib.html", "shelve.html", "zipimport.html", "fcntl.html")
HTML_ROOT = Path("/usr/share/doc/python3.11/html/library")


def _docx(path: Path, number: int) -> bytes:
    import docx

    document = docx.Document()
    for chapter in range(1, 4):
        document.add_heading(f"File {number}, chapter {chapter}", level=1)
        for paragraph in range(12):
            document.add_paragraph(f"Paragraph {paragraph} of chapter {chapter} in file {number}: " + "words " * 40)
        document.add_page_break()
    document.save(str(path))
    return path.read_bytes()



def office(files: int, soffice: str, scratch: Path) -> tuple[dict[str, Any], list[bytes]]:
    inputs = [(f"f{n}", ".docx", _docx(scratch / f"f{n}.docx", n)) for n in range(files)]
    converter = OfficeConverter(soffice, timeout=120)
    try:
        converter.convert(inputs[:1])  # the profile is created on the first start: not part of either figure
        started = time.perf_counter()
        for item in inputs:
            single = converter.convert([item])
        one_by_one = time.perf_counter() - started
        started = time.perf_counter()
        batch = converter.convert(inputs)
        batched = time.perf_counter() - started
    finally:
        converter.close()
    pdfs = [pdf for pdf in batch.values() if isinstance(pdf, bytes)]
    assert len(pdfs) == files and isinstance(single[inputs[-1][0]], bytes), batch
    return {"files": files, "pages": sum(len(pdf_page_texts(p)) for p in pdfs),
            "seconds_per_file_one_process_each": round(one_by_one / files, 3),
            "seconds_per_file_one_process_per_batch": round(batched / files, 3),
            "batch_speedup": round(one_by_one / batched, 2)}, pdfs


def html(chromium: str) -> tuple[dict[str, Any], list[bytes]]:
    pages = [HTML_ROOT / name for name in HTML_PAGES if (HTML_ROOT / name).is_file()]
    started = time.perf_counter()
    pdfs = [print_html_to_pdf(chromium, page, timeout=120) for page in pages]
    seconds = time.perf_counter() - started
    printed = [p for p in pdfs if isinstance(p, bytes)]
    return {"files": len(pages), "printed": len(printed), "pages": sum(len(pdf_page_texts(p)) for p in printed),
            "seconds_per_file": round(seconds / max(1, len(pages)), 3)}, printed


def render(pdfs: list[bytes]) -> dict[str, Any]:
    started = time.perf_counter()
    pages = sum(1 for pdf in pdfs for _ in render_pdf_pages(pdf, 1.0))
    seconds = time.perf_counter() - started
    return {"pages": pages, "pages_per_second": round(pages / seconds, 1) if seconds else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.page_screenshots", description=__doc__)
    parser.add_argument("--files", type=int, default=8, help="DOCX files in the Office batch (default: 8)")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)
    soffice, chromium = find_soffice(), find_chromium()
    if soffice is None or chromium is None:
        print("needs LibreOffice (soffice) and Chromium: install Debian's libreoffice-core-nogui, "
              "libreoffice-writer-nogui and chromium, or set KB_SOFFICE / KB_CHROMIUM")
        return 2
    machine = {"cpu_flags": cpu_flags(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
               "python": platform.python_version()}
    print(f"machine: {machine}")
    with tempfile.TemporaryDirectory(prefix="kb-bench-shots-") as scratch:
        office_figures, office_pdfs = office(args.files, soffice, Path(scratch))
    print(f"office (DOCX via LibreOffice): {office_figures}")
    html_figures, html_pdfs = html(chromium)
    print(f"html (Python docs via Chromium): {html_figures}")
    render_figures = render(office_pdfs + html_pdfs)
    print(f"PNG rendering at 72 dpi: {render_figures}")
    report = {"machine": machine, "office": office_figures, "html": html_figures, "render": render_figures}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
