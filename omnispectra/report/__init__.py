"""An inspection report of a catalogue: static HTML pages to look at the answers.

``inspect_catalogue("cat.ecsv", "report/")`` (CLI: ``omnispectra inspect cat.ecsv -o
report/``) reads a catalogue made by ``omnispectra classify --full`` and writes

- ``index.html``: counts per class and per flag bit, and the catalogue as a table that
  sorts by any column (click its header) and filters by class, flag and confidence;
- ``page-001.html``, ...: one panel per spectrum, ``per_page`` to a page: the spectrum
  read back from its ``source_file`` (binned for display, with its 1-sigma noise band), the
  best-fit template at the catalogue's redshift, the main lines at that redshift, the
  class probabilities, the decoded flag and the stellar parameters.

The pages are static and self-contained (Bokeh's JavaScript inline: no server, no
network; they open from ``file://``). Bokeh is an optional dependency: ``pip install
"omnispectra[report]"``.

The template model: a catalogue with ``subtype`` and ``coeff`` columns is drawn with its
stored coefficients; otherwise the template fitter refits the row's class at the row's
redshift (:meth:`omnispectra.redshift.RedshiftFitter.model_at`). The summary page says which.

This package sits above :mod:`omnispectra.api` in the layering: it imports the core, and
the core never imports it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..exceptions import OutputExistsError
from ..fileio import check_output, write_text
from .html import page_html, page_name, require_bokeh, summary_html
from .panels import SpectrumCache, build_panel, check_catalogue, model_source

__all__ = ["inspect_catalogue", "catalogue_rows"]

logger = logging.getLogger(__name__)


def catalogue_rows(table: Any) -> list[dict[str, Any]]:
    """The rows of a catalogue Table as dicts of plain values (masked entries as NaN/"")."""
    columns = {}
    for name in table.colnames:
        col = table[name]
        values = np.ma.getdata(col)
        mask = np.ma.getmaskarray(col)
        if values.dtype.kind == "f":
            values = np.where(mask, np.nan, values)
        columns[name] = values
    out = []
    for k in range(len(table)):
        row = {}
        for name, values in columns.items():
            value = values[k]
            row[name] = value.item() if np.ndim(value) == 0 and hasattr(value, "item") else value
        out.append(row)
    return out


def _prepare_output(output: str | os.PathLike, inputs: list[Any], overwrite: bool) -> Path:
    """The report folder, refused when it is a file or holds a report and ``overwrite`` is False."""
    out = Path(output).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"the output {out} is a file; inspect writes a folder")
    for path in [out / "index.html", *sorted(out.glob("page-*.html"))]:
        check_output(path, inputs, overwrite=overwrite)
    return out


def _read(catalogue: Any) -> tuple[Any, Path | None]:
    from astropy.table import Table

    if isinstance(catalogue, Table):
        return catalogue, None
    path = Path(catalogue).expanduser()
    if not path.is_file():
        raise FileNotFoundError(2, "no such catalogue file", str(path))
    return Table.read(path), path


def inspect_catalogue(catalogue: Any, output: str | os.PathLike, templates: Any = None,
                      per_page: int = 50, max_points: int = 1000, overwrite: bool = False) -> Path:
    """Write the inspection report of a catalogue into the folder ``output``.

    Parameters
    ----------
    catalogue : path or astropy.table.Table
        A catalogue made by ``omnispectra classify --full`` (``id``, ``source_file``,
        ``class``; the probabilities, ``spectype``, ``z``, ``z_err``, ``flag``, stellar
        parameters and ``subtype``/``coeff`` are used when present). Rows are mapped back to
        spectra by reading ``source_file`` (:func:`omnispectra.io.read`; a relative path
        also against the catalogue's folder) and matching ``id``.
    output : path
        The report folder (created when missing).
    templates : path or RedshiftFitter, optional
        The Redrock template folder (default ``$OMNISPECTRA_TEMPLATES``).
    per_page : int
        Panels per page.
    max_points : int
        Most points drawn per spectrum (longer spectra are binned; the panel says by how much).
    overwrite : bool
        Replace a report already in ``output``.

    Returns
    -------
    Path
        ``output/index.html``, the summary page.

    Raises
    ------
    MissingDependencyError
        Bokeh is not installed (``pip install "omnispectra[report]"``).
    CatalogueError
        The table lacks ``id``, ``source_file`` or ``class``, or has no rows.
    OutputExistsError, OutputIsInputError
        ``output`` is a file, or holds a report and ``overwrite`` is False.
    TemplatesNotFoundError
        No template folder given or set.
    """
    from ..redshift import fitter_for

    if per_page < 1:
        raise ValueError(f"per_page must be at least 1, got {per_page}")
    require_bokeh()
    table, path = _read(catalogue)
    check_catalogue(table)
    out = _prepare_output(output, [path] if path is not None else [], overwrite)
    fitter = fitter_for(templates)
    source = model_source(table.colnames)
    title = f"omnispectra inspect: {path.name if path is not None else 'catalogue'}"
    note = ("Template models: " + ("the catalogue's subtype and coefficients (subtype/coeff columns)."
                                   if source == "catalogue" else
                                   "refitted with the template fitter at each row's z and class "
                                   "(the catalogue has no subtype/coeff columns).")
            + f" Spectra binned to at most {max_points} points for display; the band is the 1σ noise "
              "of the binned points.")
    rows = catalogue_rows(table)
    cache = SpectrumCache(path.parent if path is not None else None)
    n_pages = -(-len(rows) // per_page)
    for page in range(1, n_pages + 1):
        lo = (page - 1) * per_page
        panels = [build_panel(k, rows[k], cache, fitter, source, max_points)
                  for k in range(lo, min(lo + per_page, len(rows)))]
        write_text(out / page_name(page), page_html(panels, page, n_pages, title, note))
        logger.info("page %d of %d written", page, n_pages)
    meta = {k: v for k, v in table.meta.items() if k.isupper()}
    index = out / "index.html"
    write_text(index, summary_html(rows, per_page, title, meta, note))
    for stale in out.glob("page-*.html"):  # pages of an earlier, longer report
        number = stale.stem.removeprefix("page-")
        if number.isdigit() and int(number) > n_pages:
            stale.unlink()
    return index
