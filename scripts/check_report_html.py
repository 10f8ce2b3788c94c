#!/usr/bin/env python3
"""Open a study's report.html in headless Chromium and check that it renders what its markdown promises.

    python scripts/check_report_html.py runs/studies/quickstart/report.html [--screenshot shot.png]

Checks, in a real browser (Debian's ``chromium`` driven by Playwright; install both with
``apt-get install -y chromium`` and ``pip install playwright``, no browser download needed):
- every heading of ``report.md`` (beside the HTML) is a heading of the page, in the same order;
- every image the markdown embeds is an <img> with that alt text that the browser decoded (``complete`` and a
  natural width above 0) and laid out with a visible size;
- every markdown table is a <table> with as many body rows;
- the page screenshot is not blank (more than one colour in its image area).
Prints one line per check and exits 1 if any fails, 2 if no browser can be started.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def promised(markdown: str) -> dict[str, list]:
    """Headings, images (alt, file) and table body-row counts the markdown report contains, in order."""
    lines = markdown.splitlines()
    headings = [re.sub(r"[`*]", "", m.group(2)).strip() for line in lines if (m := re.match(r"(#{1,4}) (.+)", line))]
    images = re.findall(r"!\[([^\]]*)\]\(([^)]+)\)", markdown)
    tables, in_table = [], False
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            tables.append(0)
            in_table = True
        elif in_table and line.startswith("|") and not line.startswith("|---"):
            tables[-1] += 1
        elif not line.startswith("|"):
            in_table = False
    return {"headings": headings, "images": images, "tables": tables}


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def check(html_path: Path, screenshot: Path | None = None) -> list[tuple[str, bool, str]]:
    """(check, passed, detail) for the page at ``html_path`` against its markdown."""
    from playwright.sync_api import sync_playwright

    md = html_path.with_suffix(".md")
    want = promised(md.read_text())
    results: list[tuple[str, bool, str]] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=find_chromium(), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(html_path.resolve().as_uri())
        page.wait_for_load_state("load")
        headings = [re.sub(r"\s+", " ", t).strip() for t in page.eval_on_selector_all(
            "h1, h2, h3, h4", "els => els.map(e => e.textContent)")]
        missing = [h for h in want["headings"] if h not in headings]
        results.append(("headings", not missing and headings == want["headings"],
                        f"{len(headings)} of {len(want['headings'])}" + (f"; missing {missing}" if missing else "")))
        imgs = page.eval_on_selector_all("img", """els => els.map(e => ({alt: e.alt, complete: e.complete,
            w: e.naturalWidth, h: e.naturalHeight, shown: e.getBoundingClientRect().width}))""")
        by_alt = {i["alt"]: i for i in imgs}
        for alt, src in want["images"]:
            i = by_alt.get(alt)
            ok = i is not None and i["complete"] and i["w"] > 0 and i["h"] > 0 and i["shown"] > 0
            results.append((f"image {src}", ok, "decoded {w}x{h}, shown {shown:.0f} px wide".format(**i) if i
                            else "no <img> with this alt text"))
        rows = page.eval_on_selector_all("table", "els => els.map(t => t.tBodies[0] ? t.tBodies[0].rows.length : 0)")
        results.append(("tables", rows == want["tables"], f"body rows {rows} (markdown: {want['tables']})"))
        shot = page.screenshot(full_page=True, path=str(screenshot) if screenshot else None)
        browser.close()
    results.append(("screenshot not blank", _colours(shot) > 1, f"{_colours(shot)} colours"))
    return results


def _colours(png: bytes) -> int:
    import io

    from PIL import Image

    return len(Image.open(io.BytesIO(png)).convert("RGB").getcolors(maxcolors=1 << 24) or [])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", type=Path)
    ap.add_argument("--screenshot", type=Path, default=None, help="also write the full-page screenshot here")
    a = ap.parse_args(argv)
    if not a.html.is_file() or not a.html.with_suffix(".md").is_file():
        print(f"error: {a.html} and its .md beside it are needed", file=sys.stderr)
        return 2
    try:
        results = check(a.html, a.screenshot)
    except Exception as e:  # no playwright, no chromium, or a browser that does not start: one line, exit 2
        print(f"error: cannot open {a.html} in headless Chromium ({type(e).__name__}: {str(e).splitlines()[0]})",
              file=sys.stderr)
        return 2
    for name, ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
