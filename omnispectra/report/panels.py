"""What one panel of the inspection report shows, as plain numbers (no plotting library).

For every catalogue row: the spectrum read back from its ``source_file`` (matched by
``id``), thinned for display, its noise band, the best-fit template model at the row's
redshift and class, the main lines at that redshift, and the row's values formatted to
their precision. :mod:`omnispectra.report.html` turns these into pages.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..exceptions import CatalogueError, OmniSpectraError
from ..flags import flag_names
from ..results import COLUMN_FORMATS, z_format
from ..spectrum import spectrum_data

__all__ = ["LINES", "REQUIRED_COLUMNS", "Panel", "Thinned", "check_catalogue", "confidence",
           "lines_in_view", "thin", "find_spectrum", "SpectrumCache", "model_source", "build_panel",
           "format_value", "row_flag_names"]

logger = logging.getLogger(__name__)

#: Columns every inspected catalogue needs (``omnispectra classify --full`` writes them).
REQUIRED_COLUMNS = ("id", "source_file", "class")

#: Main lines: (name, vacuum rest wavelength in Angstrom, kind, classes it is marked for).
LINES: tuple[tuple[str, float, str, str], ...] = (
    ("Lyβ", 1025.72, "emission", "QSO"),
    ("Lyα", 1215.67, "emission", "QSO GALAXY"),
    ("N V", 1240.81, "emission", "QSO"),
    ("Si IV", 1396.76, "emission", "QSO"),
    ("C IV", 1549.06, "emission", "QSO GALAXY"),
    ("C III]", 1908.73, "emission", "QSO GALAXY"),
    ("Mg II", 2799.49, "emission", "QSO GALAXY"),
    ("[O II]", 3728.48, "emission", "QSO GALAXY"),
    ("Ca K", 3934.78, "absorption", "GALAXY STAR"),
    ("Ca H", 3969.59, "absorption", "GALAXY STAR"),
    ("Hδ", 4102.89, "absorption", "GALAXY STAR"),
    ("G band", 4305.61, "absorption", "GALAXY STAR"),
    ("Hγ", 4341.68, "emission", "QSO GALAXY STAR"),
    ("Hβ", 4862.68, "emission", "QSO GALAXY STAR"),
    ("[O III]", 4960.30, "emission", "GALAXY"),
    ("[O III]", 5008.24, "emission", "QSO GALAXY"),
    ("Mg b", 5176.70, "absorption", "GALAXY STAR"),
    ("Na D", 5895.60, "absorption", "GALAXY STAR"),
    ("Hα", 6564.61, "emission", "QSO GALAXY STAR"),
    ("[N II]", 6585.27, "emission", "GALAXY"),
    ("[S II]", 6725.48, "emission", "GALAXY"),
)


@dataclass
class Thinned:
    """A spectrum binned for display: ivar-weighted means of ``factor`` consecutive pixels.

    ``sigma`` is the 1-sigma error of each binned value (``1 / sqrt(sum ivar)``; NaN where
    the file has no uncertainties), so the band is the noise of the points drawn.
    """

    wavelength: np.ndarray
    flux: np.ndarray
    sigma: np.ndarray
    model: np.ndarray | None
    factor: int


@dataclass
class Panel:
    """Everything one panel shows (see :func:`build_panel`)."""

    index: int
    row: dict[str, Any]
    thinned: Thinned | None = None
    flux_unit: str = ""
    lines: list[tuple[str, float, str]] = field(default_factory=list)
    model_note: str = ""
    problem: str = ""


def check_catalogue(table: Any) -> None:
    """Refuse a table that is not an inspectable catalogue.

    Raises
    ------
    CatalogueError
        A column of :data:`REQUIRED_COLUMNS` is missing, or the table has no rows.
    """
    missing = [name for name in REQUIRED_COLUMNS if name not in table.colnames]
    if missing:
        raise CatalogueError(
            f"the catalogue lacks the column(s) {', '.join(missing)}; inspect reads catalogues made "
            "by `omnispectra classify --full` (id, source_file, class, probabilities, z, flag ...)")
    if not len(table):
        raise CatalogueError("the catalogue has no rows")


def confidence(row: dict[str, Any]) -> float:
    """The probability of the row's class (``prob_<class>``), NaN when the table has none."""
    value = row.get(f"prob_{row.get('class', '')}")
    return float(value) if value is not None else float("nan")


def row_flag_names(value: Any) -> list[str]:
    """The names of the bits of a flag value (``["?"]`` for a value :mod:`omnispectra.flags` rejects)."""
    try:
        return flag_names(int(value))
    except (TypeError, ValueError):
        return ["?"]


def format_value(name: str, value: Any, error: Any = None) -> str:
    """A catalogue value as a scientist writes it: ``z`` by its error, Teff to 1 K, ... .

    NaN or missing values give ``""``; ``error`` (same unit) is appended as ``± e``.
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "" if value is None else str(value)
    if not np.isfinite(v):
        return ""
    if name == "z":
        fmt = z_format([error] if error is not None else None)
    elif name.startswith("prob_"):
        fmt = ".3f"
    else:
        fmt = COLUMN_FORMATS.get(name, ".4g")
    text = format(v, fmt)
    try:
        e = float(error)
    except (TypeError, ValueError):
        return text
    if np.isfinite(e):
        text += " ± " + format(e, COLUMN_FORMATS.get(f"{name}_err", fmt if name != "z" else ".2g"))
    return text


def lines_in_view(spectype: str, z: float, wmin: float, wmax: float) -> list[tuple[str, float, str]]:
    """The :data:`LINES` of a class at redshift ``z`` inside ``[wmin, wmax]`` (observed Angstrom)."""
    if not np.isfinite(z):
        return []
    out = []
    for name, rest, kind, classes in LINES:
        obs = rest * (1.0 + z)
        if spectype in classes.split() and wmin <= obs <= wmax:
            out.append((name, obs, kind))
    return out


def thin(wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray | None, model: np.ndarray | None = None,
         max_points: int = 1000) -> Thinned:
    """Bin a spectrum (and its model) to at most ``max_points`` points for display.

    Bins are ``factor = ceil(n / max_points)`` consecutive pixels; the flux is the
    ivar-weighted mean of the valid pixels (``ivar > 0``, finite flux), the model the same
    weighted mean where it is finite (a plain mean in bins without valid data); a bin
    without a valid pixel is NaN in the flux (a gap). With
    ``ivar=None`` (no uncertainties) pixels weigh equally and ``sigma`` is NaN.
    """
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    wave = np.asarray(wavelength, dtype=np.float64)
    f = np.asarray(flux, dtype=np.float64)
    has_ivar = ivar is not None
    w = np.asarray(ivar, dtype=np.float64) if has_ivar else np.ones_like(f)
    w = np.where(np.isfinite(f) & np.isfinite(w) & (w > 0), w, 0.0)
    factor = max(1, -(-wave.size // max_points))
    n_bins = -(-wave.size // factor)
    pad = n_bins * factor - wave.size

    def binned(values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        return np.pad(values, (0, pad), constant_values=fill).reshape(n_bins, factor)

    wsum = binned(w).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        flux_b = binned(np.where(w > 0, w * f, 0.0)).sum(axis=1) / wsum
        sigma = 1.0 / np.sqrt(wsum) if has_ivar else np.full(n_bins, np.nan)
        model_b = None
        if model is not None:
            m = np.asarray(model, dtype=np.float64)
            finite = np.isfinite(m)
            wm = np.where(finite, w, 0.0)
            weighted = binned(np.where(wm > 0, wm * m, 0.0)).sum(axis=1) / binned(wm).sum(axis=1)
            # where the data are masked the model is still drawn (plain mean)
            plain = binned(np.where(finite, m, 0.0)).sum(axis=1) / binned(finite.astype(float)).sum(axis=1)
            model_b = np.where(binned(wm).sum(axis=1) > 0, weighted, plain)
    counts = binned(np.ones_like(wave)).sum(axis=1)
    wave_b = binned(wave).sum(axis=1) / counts
    flux_b[wsum <= 0] = np.nan
    sigma[wsum <= 0] = np.nan
    return Thinned(wave_b, flux_b, sigma, model_b, factor)


def find_spectrum(spectra: Sequence[Any], row_id: str) -> Any:
    """The spectrum of a file whose ``meta['id']`` is the catalogue id.

    The catalogue may have prefixed a repeated id with parent folders (``B/spec``); the
    last part then matches. A file holding one spectrum gives it whatever its id.

    Raises
    ------
    CatalogueError
        No spectrum of the file has that id.
    """
    ids = [str((getattr(s, "meta", None) or {}).get("id", "")) for s in spectra]
    for wanted in (row_id, row_id.rsplit("/", 1)[-1], row_id.split("#", 1)[0]):
        if wanted in ids:
            return spectra[ids.index(wanted)]
    if len(spectra) == 1:
        return spectra[0]
    raise CatalogueError(f"no spectrum with id {row_id!r} in the file (it holds {', '.join(ids[:5])}"
                         + (" ..." if len(ids) > 5 else "") + ")")


class SpectrumCache:
    """Read each ``source_file`` once (:func:`omnispectra.io.read`), relative paths also
    against the catalogue's folder; keeps the last few files only (memory)."""

    def __init__(self, base: str | os.PathLike | None = None, keep: int = 16) -> None:
        self.base = Path(base) if base is not None else None
        self.keep = keep
        self._files: dict[str, Any] = {}

    def _path(self, source: str) -> Path:
        path = Path(source).expanduser()
        if not path.exists() and not path.is_absolute() and self.base is not None:
            path = self.base / path
        return path

    def get(self, source: str, row_id: str) -> Any:
        """The spectrum ``row_id`` of ``source`` (an OmniSpectraError when it cannot be read)."""
        from .. import io

        if source not in self._files:
            if len(self._files) >= self.keep:
                self._files.pop(next(iter(self._files)))
            try:
                self._files[source] = io.read(self._path(source))
            except OmniSpectraError as err:
                self._files[source] = err
        found = self._files[source]
        if isinstance(found, OmniSpectraError):
            raise found
        return find_spectrum(found, row_id)


def model_source(colnames: Sequence[str]) -> str:
    """How panels get their template model: ``"catalogue"`` (``subtype`` + ``coeff``
    columns) or ``"refit"`` (the template fitter at the row's z and class)."""
    return "catalogue" if {"subtype", "coeff"} <= set(colnames) else "refit"


def _row_model(row: dict[str, Any], spectrum: Any, fitter: Any, source: str) -> tuple[Any, str]:
    """(model flux or None, a note saying where it came from or why there is none)."""
    spectype = str(row.get("spectype") or row.get("class") or "")
    z = float(row.get("z", np.nan))
    if fitter is None:
        return None, "no template model (no templates given)"
    if not spectype or not np.isfinite(z):
        return None, "no template model (the row has no redshift solution)"
    kwargs: dict[str, Any] = {"z": z, "spectype": spectype}
    if source == "catalogue":
        kwargs.update(subtype=str(row.get("subtype") or ""), coefficients=row.get("coeff"))
    try:
        drawn = fitter.model_at(spectrum, **kwargs)
    except OmniSpectraError as err:
        return None, f"no template model ({err})"
    how = "catalogue coefficients" if source == "catalogue" else "refitted at the catalogue's z"
    return drawn.flux, f"{drawn.template} at z = {format_value('z', z, row.get('z_err'))} ({how})"


def build_panel(index: int, row: dict[str, Any], cache: SpectrumCache, fitter: Any, source: str,
                max_points: int = 1000) -> Panel:
    """The :class:`Panel` of one catalogue row; a row whose spectrum cannot be read or used
    gets a panel that says why (logged as a warning), never an exception."""
    panel = Panel(index=index, row=row)
    try:
        spectrum = cache.get(str(row["source_file"]), str(row["id"]))
        data = spectrum_data(spectrum)
    except OmniSpectraError as err:
        panel.problem = f"spectrum not shown: {err}"
        logger.warning("row %d (%s): %s", index, row["id"], panel.problem)
        return panel
    model, panel.model_note = _row_model(row, spectrum, fitter, source)
    flux = np.where(data.bad, np.nan, data.flux)
    ivar = np.where(data.bad, 0.0, data.ivar) if data.has_ivar else None
    panel.thinned = thin(data.wavelength, flux, ivar, model, max_points=max_points)
    unit = getattr(getattr(spectrum, "flux", None), "unit", None)
    panel.flux_unit = "" if unit is None or unit.to_string() == "" else unit.to_string()
    spectype = str(row.get("spectype") or row.get("class") or "")
    panel.lines = lines_in_view(spectype, float(row.get("z", np.nan)), float(data.wavelength[0]),
                                float(data.wavelength[-1]))
    if ivar is None:
        panel.model_note += "; no uncertainties in the file: no noise band"
    return panel
