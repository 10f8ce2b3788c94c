"""The study report as one self-contained HTML page: plots embedded as base64 PNG, no script, no network.

It renders the markdown the report writer produces (headings, paragraphs, bullet lists, pipe tables, images,
code blocks, inline code and bold), not markdown in general: that subset is all the report uses, and a
dependency for it would be one more thing to install on a cluster.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}img{max-width:100%;display:block;margin:1em 0}
code,pre{background:#f6f6f6;padding:1px 4px}pre{padding:8px}figure{margin:0}figcaption{font-size:12px;color:#555}"""


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _image(alt: str, src: str, base: Path) -> str:
    path = base / src
    if not path.is_file():
        return f'<p class="missing">missing plot: {html.escape(src)}</p>'
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(alt)}</figcaption></figure>")


def _table(rows: list[str]) -> str:
    cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
    head, body = cells[0], [r for r in cells[2:]]
    out = ["<table><thead><tr>", *[f"<th>{_inline(c)}</th>" for c in head], "</tr></thead><tbody>"]
    for r in body:
        out += ["<tr>", *[f"<td>{_inline(c)}</td>" for c in r], "</tr>"]
    return "".join(out + ["</tbody></table>"])


def markdown_to_html(text: str, base: Path, title: str) -> str:
    """``text`` (the report's markdown) as a standalone page; images are read from ``base`` and embedded."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("```")), len(lines))
            out.append(f"<pre><code>{html.escape(chr(10).join(lines[i + 1:j]))}</code></pre>")
            i = j + 1
            continue
        if line.startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            out.append(_table(lines[i:j]))
            i = j
            continue
        if line.startswith("- "):
            j = i
            while j < len(lines) and lines[j].startswith("- "):
                j += 1
            out.append("<ul>" + "".join(f"<li>{_inline(x[2:])}</li>" for x in lines[i:j]) + "</ul>")
            i = j
            continue
        m = re.match(r"^(#{1,6}) (.*)$", line)
        img = re.match(r"^!\[([^\]]*)\]\(([^)]+)\)$", line.strip())
        if m:
            out.append(f"<h{len(m.group(1))}>{_inline(m.group(2))}</h{len(m.group(1))}>")
        elif img:
            out.append(_image(img.group(1), img.group(2), base))
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")
