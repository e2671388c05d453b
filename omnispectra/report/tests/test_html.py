"""The report's files: self-contained pages, the summary's contents, never overwriting, the CLI."""

import re

import pytest
from click.testing import CliRunner

from omnispectra.cli import main
from omnispectra.exceptions import MissingDependencyError, OutputExistsError
from omnispectra.report import inspect_catalogue

pytest.importorskip("bokeh")


@pytest.fixture(scope="module")
def report(catalogue, fitter, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "rep"
    index = inspect_catalogue(catalogue, out, templates=fitter, per_page=5, max_points=400)
    return index


def test_files_and_self_contained_pages(report):
    out = report.parent
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "page-001.html", "page-002.html",
                                                     "page-003.html"]
    page = (out / "page-001.html").read_text()
    # nothing fetched: works offline, from file:// (Bokeh's own code names a MathJax CDN it never uses here)
    assert not re.search(r"<(script|link|img)[^>]*(src|href)=\"(https?:)?//", page)
    assert "Bokeh" in page and page.count('class="panel"') == 5
    assert 'id="row-0"' in page and 'href="page-002.html"' in page
    assert "z = 0.02126 ± 1.7e-05" in page  # z to the first digit of its error
    assert "5028 ± 208 K" in page  # Teff to 1 K
    assert "LOW_SN" in (out / "page-001.html").read_text()  # row 3 has flag 10
    assert "refitted" in page


def test_summary_counts_and_links(report):
    text = report.read_text()
    assert text.count("<tr data-cls=") == 12
    assert re.search(r"<td>STAR</td><td>8</td>", text) and re.search(r"<td>GALAXY</td><td>4</td>", text)
    assert re.search(r"<td>LOW_SN</td><td>3</td>", text)
    assert re.search(r"<td>0 \(use it\)</td><td>9</td>", text)
    assert 'href="page-003.html#row-11"' in text
    assert "refitted with the template fitter" in text


def test_never_overwrites_without_asking(report, catalogue, fitter):
    before = report.read_text()
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        inspect_catalogue(catalogue, report.parent, templates=fitter)
    assert report.read_text() == before
    again = inspect_catalogue(catalogue, report.parent, templates=fitter, per_page=50, overwrite=True)
    assert sorted(p.name for p in again.parent.iterdir()) == ["index.html", "page-001.html"]  # stale pages go


def test_cli_inspect(catalogue, fitter, tmp_path, monkeypatch):
    out = tmp_path / "rep"
    args = ["inspect", str(catalogue), "-o", str(out)]
    empty = CliRunner().invoke(main, [*args, "--templates", str(tmp_path)])
    assert empty.exit_code == 1 and "no Redrock templates" in empty.output and "Traceback" not in empty.output
    monkeypatch.setattr("omnispectra.redshift.fitter_for", lambda templates: fitter)
    result = CliRunner().invoke(main, ["inspect", str(catalogue), "-o", str(out), "--per-page", "6"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "page-001.html", "page-002.html"]
    again = CliRunner().invoke(main, ["inspect", str(catalogue), "-o", str(out)])
    assert again.exit_code == 1 and "--overwrite" in again.output and "overwrite=True" not in again.output


def test_missing_bokeh_names_the_extra(catalogue, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_bokeh(name, *args, **kwargs):
        if name == "bokeh" or name.startswith("bokeh."):
            raise ImportError("No module named 'bokeh'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bokeh)
    with pytest.raises(MissingDependencyError, match=r'pip install "omnispectra\[report\]"'):
        inspect_catalogue(catalogue, tmp_path / "rep")
    result = CliRunner().invoke(main, ["inspect", str(catalogue), "-o", str(tmp_path / "rep")])
    assert result.exit_code == 1 and "omnispectra[report]" in result.output
