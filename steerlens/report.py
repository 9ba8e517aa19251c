"""The one report page: a self-contained HTML file (plotly.js inlined once, nothing fetched at
view time) built from a title, sections, paragraphs, tables and plotly figures, and written
atomically next to an optional JSON side-car.

    page = Page("Probe report")
    page.section("Metric by layer")
    page.paragraph("Chosen on ", bold("validation"), " only.")
    page.table([{"layer": 0, "auroc": "0.91"}, {"layer": 1, "auroc": "0.97"}])
    page.figure(fig)
    path = page.write(out / "report.html", data=payload)  # also out/report.json; returns the Path

Text is HTML-escaped everywhere; wrap ready-made markup in ``HTML`` to insert it as is.

Every package's ``write_report(result, out, *, ...)`` (``probes``, ``steer``, ``editing``) builds
one ``Page``: ``out`` is a directory (created if missing) that receives ``report.html`` and
``report.json``, and the ``Path`` of ``report.html`` is returned. Core knows nothing of those
packages; they import this module.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["HTML", "Page", "bold", "escape"]


class HTML(str):
    """Markup the page inserts as is (every other string is escaped)."""


def escape(x: Any) -> HTML:
    """``x`` as HTML: ``HTML`` passes through, anything else is ``str()``-ed and escaped."""
    return x if isinstance(x, HTML) else HTML(html.escape(str(x)))


def bold(x: Any) -> HTML:
    return HTML(f"<b>{escape(x)}</b>")


class Page:
    """One self-contained report page. Add blocks in order, then ``render()`` or ``write()``.

    ``title`` is the browser title and, unless ``heading`` is given, the ``<h1>``.
    """

    def __init__(self, title: str, *, heading: str | None = None) -> None:
        self.title = title
        self._blocks: list[str] = [f"<h1>{escape(title if heading is None else heading)}</h1>"]
        self._n_figures = 0

    def section(self, title: str, *, level: int = 2) -> None:
        """A heading: ``<h2>`` (``level=3`` for a sub-section)."""
        if level not in (2, 3, 4):
            raise ValueError(f"level must be 2, 3 or 4, got {level!r}")
        self._blocks.append(f"<h{level}>{escape(title)}</h{level}>")

    def paragraph(self, *parts: Any) -> None:
        """One ``<p>`` of the concatenated ``parts`` (text escaped, ``HTML`` as is)."""
        self._blocks.append(f"<p>{''.join(escape(p) for p in parts)}</p>")

    def bullets(self, items: Iterable[Any]) -> None:
        self._blocks.append("<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>")

    def preformatted(self, text: str) -> None:
        """A ``<pre>`` block (e.g. indented JSON)."""
        self._blocks.append(f"<pre>{escape(text)}</pre>")

    def table(
        self,
        rows: Iterable[Mapping[str, Any] | Sequence[Any]],
        headers: Sequence[str] | None = None,
        *,
        header_column: bool = False,
        fmt: Callable[[Any], Any] = str,
    ) -> None:
        """A table from a list of dicts (columns: ``headers`` if given, else the keys in first-seen
        order; a missing key is an empty cell) or from rows of cells with optional ``headers``.

        Every cell is ``fmt(cell)`` escaped (an ``HTML`` cell is inserted as is, unformatted).
        ``header_column``: the first cell of each row is a ``<th>`` (a key/value table).
        """
        rows = list(rows)
        if rows and all(isinstance(r, Mapping) for r in rows):
            if headers is None:
                headers = list(dict.fromkeys(k for r in rows for k in r))
            cells = [[r.get(h, "") for h in headers] for r in rows]
        elif any(isinstance(r, Mapping) for r in rows):
            raise TypeError("rows must be all dicts or all sequences of cells")
        else:
            cells = [list(r) for r in rows]

        def cell(x: Any, tag: str) -> str:
            return f"<{tag}>{x if isinstance(x, HTML) else escape(fmt(x))}</{tag}>"

        head = "" if headers is None else "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in headers) + "</tr>"
        body = "".join("<tr>" + "".join(cell(x, "th" if header_column and j == 0 else "td") for j, x in enumerate(r))
                       + "</tr>" for r in cells)
        self._blocks.append(f"<table>{head}{body}</table>")

    def figure(self, fig: Any) -> None:
        """A plotly figure (the library itself is inlined once, in the page's head)."""
        self._blocks.append(fig.to_html(full_html=False, include_plotlyjs=False))
        self._n_figures += 1

    def render(self) -> str:
        """The whole page as one HTML string; plotly.js is inlined once if there is any figure."""
        script = ""
        if self._n_figures:
            from plotly.offline import get_plotlyjs

            script = ("<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>\n"
                      f"<script>{get_plotlyjs()}</script>\n")
        body = "\n".join(self._blocks)
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(self.title)}</title>\n'
                f"<style>{_CSS}</style>\n{script}</head>\n<body>\n{body}\n</body></html>\n")

    def write(self, path: str | os.PathLike, *, data: Any = None, data_path: str | os.PathLike | None = None) -> Path:
        """Write the page to the file ``path`` atomically (a failure leaves what was there) and, if
        ``data`` is given, ``data`` as JSON to ``data_path`` (default: ``path`` with ``.json``),
        also atomically, first. Parent directories are created. Returns ``Path(path)``."""
        from steerlens.io import write_json, write_text

        path = Path(path)
        page = self.render()  # before touching any file: a failing figure writes nothing
        if data is not None:
            write_json(path.with_suffix(".json") if data_path is None else data_path, data)
        write_text(path, page)
        return path


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1em; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; font-size: 13px; text-align: left; vertical-align: top; }
th { font-weight: 600; background: #f6f6f6; }
li { margin: 4px 0; }
pre { font-size: 12px; background: #f6f6f6; padding: 1em; overflow-x: auto; }
"""
