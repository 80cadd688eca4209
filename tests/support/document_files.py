"""Test documents made on the fly: PDFs (known text on known pages, an image-only page, an outline,
encrypted, corrupt), DOCX and PPTX with headings, HTML with navigation noise, nested Markdown."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# one distinctive fact per page: tests ask about them and check the page they come back from
PAGE_FACTS = {
    1: "The Zephyr 9 router ships with a blue power cable and a quick start leaflet.",
    2: "Firmware updates for the Zephyr 9 are downloaded over the air every Sunday night.",
    3: "To reset the device, hold the recessed pinhole button for fifteen seconds until the lamp blinks red.",
    4: "The warranty covers hardware faults for three years from the date of purchase.",
}
SCANNED_TEXT = "SCANNED NOTICE OXYGEN"  # what the image-only page shows, in large letters


def text_image(text: str, size: tuple[int, int] = (1200, 300)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=64)
    draw.text((40, 100), text, fill="black", font=font)
    return image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def manual_pdf(path: Path, with_scanned_page: bool = True, outline: bool = True, facts: dict | None = None) -> Path:
    """Pages 1-4 carry PAGE_FACTS under "Chapter N" headings (20pt, outlined); page 5 is only an image."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    facts = facts or PAGE_FACTS
    pdf = canvas.Canvas(str(path), pagesize=A4)
    titles = {1: "Introduction", 2: "Updates", 3: "Troubleshooting", 4: "Warranty"}
    for number, fact in facts.items():
        pdf.setFont("Helvetica-Bold", 20)
        pdf.drawString(72, 780, f"Chapter {number} {titles.get(number, 'More')}")
        if outline:
            pdf.bookmarkPage(f"page{number}")
            pdf.addOutlineEntry(f"Chapter {number} {titles.get(number, 'More')}", f"page{number}", level=0)
            if number == 3:
                pdf.bookmarkPage(f"reset{number}")
                pdf.addOutlineEntry("Resetting", f"reset{number}", level=1)
        pdf.setFont("Helvetica", 11)
        if number == 3:
            pdf.setFont("Helvetica-Bold", 14)
            pdf.drawString(72, 750, "Resetting")
            pdf.setFont("Helvetica", 11)
        pdf.drawString(72, 720, fact)
        pdf.drawString(72, 700, f"This paragraph is filler text for page {number} of the manual.")
        pdf.showPage()
    if with_scanned_page:
        pdf.drawImage(ImageReader(text_image(SCANNED_TEXT)), 50, 500, width=500, height=125)
        pdf.showPage()
    pdf.save()
    return path


def encrypted_pdf(path: Path, source: Path) -> Path:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for page in PdfReader(source).pages:
        writer.add_page(page)
    writer.encrypt(user_password="secret", owner_password="owner")
    with open(path, "wb") as handle:
        writer.write(handle)
    return path


def corrupt_pdf(path: Path) -> Path:
    path.write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >>\ngarbage that is not a PDF body\n")
    return path


def guide_docx(path: Path) -> Path:
    import docx

    document = docx.Document()
    document.add_heading("Installation guide", level=1)
    document.add_paragraph("Unpack the box and place the unit on a flat surface.")
    document.add_heading("Wiring", level=2)
    document.add_paragraph("Connect the amber cable to port seven before switching on.")
    document.add_heading("Safety", level=3)
    document.add_paragraph("Never open the casing while the unit is powered.")
    document.add_heading("Maintenance", level=1)
    document.add_paragraph("Clean the air filter every six months.")
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "Filter model"
    table.rows[0].cells[1].text = "AF-220"
    document.save(str(path))
    return path


def deck_pptx(path: Path) -> Path:
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    for title, body in [("Quarterly results", "Revenue grew by eleven percent."),
                        ("Roadmap", "The lighthouse project launches in spring."),
                        ("Hiring", "We are opening an office in Lisbon.")]:
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
    extra = deck.slides.add_slide(deck.slide_layouts[6])  # blank layout: no title placeholder
    box = extra.shapes.add_textbox(Inches(1), Inches(1), Inches(5), Inches(1))
    box.text_frame.text = "An untitled slide about penguins."
    deck.save(str(path))
    return path


NOISY_HTML = """<!doctype html><html><head><title>Help centre</title><script>var tracking = 1;</script>
<style>body { color: red }</style></head><body>
<header><a href="/">Home</a> | <a href="/shop">Shop</a></header>
<nav><ul><li>Products</li><li>Support menu entry</li></ul></nav>
<div class="cookie-banner">We use cookies to track you.</div>
<main>
<h1>Battery care</h1><p>Charge the battery to eighty percent for long storage.</p>
<h2>Cold weather</h2><p>Below freezing the battery loses a third of its range.</p>
<h3>Storage</h3><p>Keep spare batteries in a dry drawer.</p>
<h2>Recycling</h2><p>Return used batteries to any collection point.</p>
</main>
<aside>Related articles: sponsored content</aside>
<footer>Copyright 2026 Example Corp. All rights reserved.</footer>
</body></html>"""

NESTED_MARKDOWN = """# Cookbook

Recipes from the family.

## Breads

### Sourdough

Feed the starter twelve hours before baking.

```python
# this is code, not a heading
print("knead")
```

### Flatbread

Cook on a very hot dry pan.

## Soups

Simmer the lentils for forty minutes.
"""
