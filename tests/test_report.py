"""The one report page (steerlens.report): plotly inlined once, escaping, atomic writes."""

import json
from pathlib import Path

import plotly.graph_objects as go
import pytest

from steerlens.report import HTML, Page, bold


def _fig(y):
    return go.Figure(go.Bar(y=y))


def test_two_figures_inline_plotly_once_and_need_no_network(tmp_path):
    page = Page("two <figures>")
    page.section("first")
    page.figure(_fig([1, 2]))
    page.paragraph("between")
    page.figure(_fig([3, 4]))
    text = page.render()
    assert text.count("plotly.js v") == 1  # the library's banner: inlined exactly once
    assert text.count('class="plotly-graph-div"') == 2 and text.count("Plotly.newPlot") == 2
    assert text.index("plotly.js v") < text.index("Plotly.newPlot")  # defined before the first plot runs
    assert 'src="http' not in text  # nothing fetched at view time
    assert "<title>two &lt;figures&gt;</title>" in text and "<h1>two &lt;figures&gt;</h1>" in text


def test_a_page_without_figures_has_no_plotly():
    page = Page("plain")
    page.paragraph("text")
    assert "plotly" not in page.render().lower()


def test_text_and_tables_are_escaped():
    page = Page("t")
    page.paragraph("a <b>not bold</b> & ", bold("<bold>"), HTML(" <i>kept</i>"))
    page.table([{"name": "<script>x</script>", "v": 1.5}, {"name": "a&b", "extra": "<e>"}])
    page.table([["<k>", 0.123456]], headers=["<key>", "value"], header_column=True,
               fmt=lambda x: f"{x:.2f}" if isinstance(x, float) else x)
    page.bullets(["<li>", HTML("<b>ok</b>")])
    page.preformatted('{"a": "<b>"}')
    text = page.render()
    body = text[text.index("<body>"):]
    assert "<script>x" not in body and "&lt;script&gt;x&lt;/script&gt;" in body
    assert "a &lt;b&gt;not bold&lt;/b&gt; &amp; <b>&lt;bold&gt;</b> <i>kept</i>" in body
    # columns from the dicts' keys in first-seen order; a missing key is an empty cell
    assert "<tr><th>name</th><th>v</th><th>extra</th></tr>" in body
    assert "<tr><td>a&amp;b</td><td></td><td>&lt;e&gt;</td></tr>" in body
    assert "<tr><th>&lt;key&gt;</th><th>value</th></tr><tr><th>&lt;k&gt;</th><td>0.12</td></tr>" in body
    assert "<li>&lt;li&gt;</li><li><b>ok</b></li>" in body
    assert '<pre>{&quot;a&quot;: &quot;&lt;b&gt;&quot;}</pre>' in body
    with pytest.raises(TypeError, match="all dicts"):
        page.table([{"a": 1}, [2]])
    with pytest.raises(ValueError, match="level"):
        page.section("x", level=1)


def test_write_returns_the_path_and_writes_the_json_side_car(tmp_path):
    page = Page("w")
    page.figure(_fig([1]))
    path = page.write(tmp_path / "new" / "report.html", data={"x": [1, 2]})
    assert isinstance(path, Path) and path == tmp_path / "new" / "report.html"
    assert "plotly.js v" in path.read_text()
    assert json.loads((tmp_path / "new" / "report.json").read_text()) == {"x": [1, 2]}
    other = page.write(str(tmp_path / "index.html"), data={"y": 1}, data_path=tmp_path / "tour.json")
    assert isinstance(other, Path) and (tmp_path / "tour.json").is_file() and not (tmp_path / "index.json").exists()


def test_a_failure_mid_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "report.html"
    Page("old").write(path, data={"v": "old"})
    old_html = path.read_text()
    real = Path.write_text

    def half_then_fail(self, text, *args, **kwargs):
        if not self.name.startswith(".report.html.tmp-"):  # the JSON side-car goes through
            return real(self, text, *args, **kwargs)
        real(self, text[: len(text) // 2], *args, **kwargs)  # half the page in the temporary ...
        raise OSError("disk full")  # ... and then the write dies

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    new = Page("new")
    new.paragraph("x" * 10_000)
    with pytest.raises(OSError, match="disk full"):
        new.write(path, data={"v": "new"})
    monkeypatch.undo()
    assert path.read_text() == old_html  # the old page, whole
    assert json.loads((tmp_path / "report.json").read_text()) == {"v": "new"}  # written (atomically) first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json"]  # no temporaries left

