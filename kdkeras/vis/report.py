"""A single results page (Markdown, optionally HTML) that links the PNGs."""

from __future__ import annotations

import html
import os
from typing import Sequence

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")


def _is_image(item: str) -> bool:
    return "\n" not in item and item.strip().lower().endswith(IMAGE_EXTENSIONS)


def _rel(image: str, page_dir: str) -> str:
    """Link to `image` relative to the page, with forward slashes (URLs)."""
    target = image if os.path.isabs(image) else os.path.abspath(image)
    return os.path.relpath(target, page_dir).replace(os.sep, "/")


def _items(content: str | Sequence[str]) -> list[str]:
    return [content] if isinstance(content, str) else list(content)


def _markdown(title: str, sections, page_dir: str) -> str:
    lines = [f"# {title}", ""]
    for heading, content in sections:
        lines += [f"## {heading}", ""]
        for item in _items(content):
            if _is_image(item):
                link = _rel(item, page_dir)
                alt = os.path.splitext(os.path.basename(item))[0]
                lines += [f"![{alt}]({link.replace(' ', '%20')})", ""]
            else:
                lines += [item.rstrip(), ""]
    return "\n".join(lines).rstrip() + "\n"


def _html(title: str, sections, page_dir: str) -> str:
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>"]
    for heading, content in sections:
        body.append(f"<h2>{esc(heading)}</h2>")
        for item in _items(content):
            if _is_image(item):
                link = _rel(item, page_dir)
                alt = os.path.splitext(os.path.basename(item))[0]
                body.append(f'<figure><a href="{esc(link)}"><img src="{esc(link)}" '
                            f'alt="{esc(alt)}"></a><figcaption>{esc(alt)}</figcaption></figure>')
            else:
                paragraphs = [p for p in item.strip().split("\n\n") if p.strip()]
                body += [f"<p>{esc(p)}</p>" for p in paragraphs]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "img{max-width:100%;border:1px solid #ddd}figure{margin:1em 0}"
             "figcaption{color:#666;font-size:0.85em}p{white-space:pre-wrap}")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{style}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def pct(value: float) -> str:
    """A 0..1 fraction as a percentage with two decimals."""
    return f"{100 * value:.2f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence], align: str | None = None) -> str:
    """A Markdown table; floats with four decimals. `align` has one letter per
    column, `l` or `r` (right-aligned numbers), default all left."""

    def cell(value) -> str:
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|")  # a pipe would split the cell

    align = align or "l" * len(headers)
    if len(align) != len(headers):
        raise ValueError(f"align {align!r} has {len(align)} letters for {len(headers)} columns.")
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align)
    lines = ["| " + " | ".join(map(str, headers)) + " |", rule]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(path: str, title: str,
                 sections: list[tuple[str, str | list[str]]], *,
                 html_copy: bool = False) -> str:
    """Write a results page and return its path.

    sections: (heading, content) pairs; content is a string or a list of
    strings, each either a paragraph of Markdown text or the path of an
    image (by extension: .png, .jpg, ...), which is embedded with a link
    relative to the page so the folder can be moved or published as is.
    A `path` ending in .html writes HTML; otherwise Markdown, plus an HTML
    copy next to it (same name, .html) when `html_copy` is set.
    """
    path = os.fspath(path)
    page_dir = os.path.dirname(os.path.abspath(path))
    os.makedirs(page_dir, exist_ok=True)
    sections = [(str(h), c) for h, c in sections]
    if path.lower().endswith((".html", ".htm")):
        with open(path, "w", encoding="utf-8") as f:
            f.write(_html(title, sections, page_dir))
        return path
    with open(path, "w", encoding="utf-8") as f:
        f.write(_markdown(title, sections, page_dir))
    if html_copy:
        with open(os.path.splitext(path)[0] + ".html", "w", encoding="utf-8") as f:
            f.write(_html(title, sections, page_dir))
    return path
