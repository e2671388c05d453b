"""Results as astropy Tables: units on the columns, provenance in ``meta``, safe to write.

Every result of omnispectra can be turned into an `~astropy.table.Table` that
round-trips through ECSV, FITS and HDF5 with ``Table.write``/``Table.read`` (write it
with :func:`write_table`, which also refuses to destroy files and writes atomically):

============================  ==================================================================
:func:`embeddings_table`      ``id``, ``source_file``, ``survey``, ``embedding`` (N, D) float32
:func:`anomaly_table`         ``id``, ``anomaly`` (the statistic behind the ``ANOMALY`` flag),
                              ``noise_estimated``
:func:`predictions_table`     ``id`` and one column per predicted quantity (``teff`` in K,
                              ``logg`` in dex(cm / s2), ``fe_h`` in dex, ``z``, ``class``, ...)
:func:`reconstruction_table`  one row per spectrum: ``id``, ``mse`` and per-pixel array columns
                              ``wavelength`` (Angstrom), ``flux`` and ``reconstruction`` (the
                              input's flux unit), ``pixel_masked``; per-token
                              ``token_wavelength``, ``token_mask``
============================  ==================================================================

Ids are a string column (not a side file), so any id survives, newlines included.

Provenance (:func:`provenance_meta`) uses short upper-case keys, so the same ``meta``
is a valid FITS header and reads back unchanged from every format:

============  ===============================================================================
``OMNIVERS``  omnispectra version that made the result
``MODEL``     model name (``default``, a registry name, or the weights file's *name*; never
              a folder)
``MODELSHA``  sha256 of the weights file (the registry's digest); empty for a model that
              did not come from a file
``ENCSHA``    sha256 over the encoder's tensors
              (:func:`omnispectra.probes.encoder_fingerprint`), for every model
``PROBE``     probe name (results of a probe only)
``PROBESHA``  sha256 over the probe's tensors (results of a probe only)
``DTYPE``     the arithmetic actually used: ``float32``, ``bfloat16`` or ``float16``
              (``dtype="auto"`` gives ``bfloat16`` on CUDA GPUs and ``float32`` on CPUs,
              so CPU results do not depend on the machine)
``DEVICE``    ``cpu``, ``cuda``, ...
``KIND``      which result: ``embeddings``, ``anomaly``, ``predictions``, ``reconstruction``
============  ===============================================================================

Units and formats (astropy 6-8; checked by the tests):

- ECSV and HDF5 (written with ``serialize_meta=True``, as :func:`write_table` does) keep
  every unit, function units such as ``dex(cm / s2)`` included.
- FITS cannot store function units: :func:`write_table` writes ``logg``/``fe_h`` as plain
  numbers (still the same dex values) and appends the unit to the column description
  (``... [unit: dex(cm / s2)]``); every other unit (K, Angstrom, flux units) is kept.
- FITS holds ASCII text only (a non-ASCII id is refused with a clear error; use ECSV or
  HDF5), and FITS and ECSV drop leading/trailing blanks of strings; HDF5 keeps every id
  exactly. Newlines, commas and quotes survive in all three.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .exceptions import OutputError
from .fileio import atomic_write, check_output

if TYPE_CHECKING:  # pragma: no cover
    from astropy.table import Table

__all__ = ["META_KEYS", "QUANTITY_UNITS", "TABLE_FORMATS", "provenance_meta", "embeddings_table",
           "anomaly_table", "predictions_table", "reconstruction_table", "quantity_unit", "table_format",
           "write_table", "COLUMN_FORMATS", "column_format", "z_format", "apply_formats", "ZBEST_COLUMNS",
           "zbest_table", "ANOMALY_DESCRIPTION", "FIT_ANOMALY_DESCRIPTION"]

#: Redrock's zbest column of each catalogue column (ZWARN is the redshift's own flag).
ZBEST_COLUMNS = {"id": "TARGETID", "spectype": "SPECTYPE", "subtype": "SUBTYPE", "z": "Z", "z_err": "ZERR",
                 "z_flag": "ZWARN", "chi2": "CHI2", "deltachi2": "DELTACHI2", "coeff": "COEFF"}

#: Provenance keys of :func:`provenance_meta`, with their meaning.
META_KEYS = {
    "OMNIVERS": "omnispectra version",
    "MODEL": "model name",
    "MODELSHA": "sha256 of the weights file",
    "ENCSHA": "sha256 over the encoder's tensors",
    "PROBE": "probe name",
    "PROBESHA": "sha256 over the probe's tensors",
    "DTYPE": "arithmetic used (float32, bfloat16, float16)",
    "DEVICE": "device type",
    "KIND": "kind of result",
}

#: File-name suffix -> astropy format name, for :func:`write_table`.
TABLE_FORMATS = {".ecsv": "ascii.ecsv", ".fits": "fits", ".fit": "fits", ".fits.gz": "fits",
                 ".h5": "hdf5", ".hdf5": "hdf5"}

#: HDF5 dataset that :func:`write_table` writes the table to (``Table.read`` finds it alone).
HDF5_PATH = "data"


def _units() -> dict[str, Any]:
    from astropy import units as u

    return {"teff": u.K, "logg": u.dex(u.cm / u.s**2), "fe_h": u.dex, "z": u.dimensionless_unscaled,
            "z_err": u.dimensionless_unscaled}


#: Names of the quantities that get units in :func:`predictions_table` (see :func:`quantity_unit`).
QUANTITY_UNITS = ("teff", "logg", "fe_h", "z", "z_err")

#: Description of the ``anomaly`` column (the anomaly tables and the catalogue rows).
ANOMALY_DESCRIPTION = ("anomaly statistic: ivar-weighted chi-square per pixel of the masked-chunk "
                       "reconstruction (omnispectra.api.anomaly_statistic); ANOMALY above the "
                       "model card's threshold (meta ANOMP99)")

#: Description of the ``anomaly`` column of a row with a template fit (the catalogue rows).
FIT_ANOMALY_DESCRIPTION = ("anomaly statistic: chi-square per pixel of the best template model, with a "
                           "model-error floor (omnispectra.redshift.residual_chi2); ANOMALY above the "
                           "training domain's 99th percentile (meta ANOMP99)")

#: Description of the ``noise_estimated`` column (the anomaly tables and the catalogue rows).
NOISE_ESTIMATED_DESCRIPTION = ("no uncertainties in the input: the statistic used a constant noise from the "
                               "pixel-to-pixel differences (omnispectra.redshift.difference_ivar)")

_DESCRIPTIONS = {
    "id": "spectrum id",
    "source_file": "file the spectrum was read from (as given)",
    "survey": "survey of the spectrum",
    "embedding": "mean-pooled last hidden state of the encoder",
    "anomaly": ANOMALY_DESCRIPTION,
    "noise_estimated": NOISE_ESTIMATED_DESCRIPTION,
    "teff": "effective temperature",
    "logg": "log10 surface gravity in cm s^-2",
    "fe_h": "iron abundance [Fe/H]",
    "z": "redshift",
    "z_err": "redshift uncertainty",
    "class": "predicted source class",
    "mse": "masked-reconstruction MSE in normalized flux units",
    "wavelength": "pixel wavelength (vacuum)",
    "flux": "observed flux (NaN on invalid pixels)",
    "reconstruction": "the model's flux for every pixel",
    "pixel_masked": "pixel hidden from the model",
    "token_wavelength": "mean wavelength of each token",
    "token_mask": "token hidden from the model",
}


def _dtype_name(dtype: Any, device: Any) -> str:
    """``float32``/``bfloat16``/``float16`` for a torch dtype, a name, ``"auto"`` or None."""
    from .runtime import resolve_dtype  # the one place that knows the dtype names

    resolved = resolve_dtype(dtype, device)
    return "float32" if resolved is None else str(resolved).removeprefix("torch.")


def provenance_meta(model: Any, probe: Any = None, dtype: Any = None, device: Any = None,
                    kind: str | None = None) -> dict[str, Any]:
    """The ``meta`` that says which code, model, probe and arithmetic made a result.

    Parameters
    ----------
    model : OmniSpectra
        The encoder (its ``info`` from :func:`omnispectra.pretrained.load_model` gives the
        name and the weights file's sha256; the tensor fingerprint is computed).
    probe : Probe, optional
        The probe whose predictions the result holds.
    dtype : torch.dtype, str or None
        The dtype the computation ran in: None (float32), a torch dtype, a name, or
        ``"auto"`` (resolved with :func:`omnispectra.api.default_dtype` on ``device``).
    device : str or torch.device, optional
        Default: the model's device.
    kind : str, optional
        Stored as ``KIND``.

    Returns
    -------
    dict
        The keys of :data:`META_KEYS` (``PROBE``/``PROBESHA`` only with a probe, ``KIND``
        only when given). Never an absolute path.
    """
    import torch

    from . import __version__
    from .probes import encoder_fingerprint

    info = getattr(model, "info", None) or {}
    if device is None:
        device = next(model.parameters()).device
    device_type = torch.device(device).type
    name = str(info.get("name", ""))
    meta: dict[str, Any] = {
        "OMNIVERS": str(__version__),
        "MODEL": Path(name).name if (os.sep in name or "/" in name) else name,
        "MODELSHA": str(info.get("sha256", "")),
        "ENCSHA": encoder_fingerprint(model),
    }
    if probe is not None:
        probe_info = getattr(probe, "info", None) or {}
        meta["PROBE"] = Path(str(probe_info.get("name", ""))).name
        meta["PROBESHA"] = encoder_fingerprint(probe) if hasattr(probe, "state_dict") else ""
    meta["DTYPE"] = _dtype_name(dtype, device_type)
    meta["DEVICE"] = device_type
    if kind is not None:
        meta["KIND"] = kind
    return meta


def _table(meta: Mapping[str, Any] | None, kind: str) -> Table:
    from astropy.table import Table

    table = Table()
    table.meta.update(dict(meta or {}))
    table.meta["KIND"] = kind
    return table


def _add(table: Table, name: str, values: Any, unit: Any = None, description: str | None = None) -> None:
    table[name] = values
    if unit is not None:
        table[name].unit = unit
    table[name].description = description or _DESCRIPTIONS.get(name, name)


def _strings(values: Any, n: int, what: str) -> np.ndarray:
    array = np.asarray([str(v) for v in values], dtype=str)
    if array.shape != (n,):
        raise ValueError(f"{what} has {array.size} entries for {n} rows")
    return array if n else np.zeros(0, dtype="U1")


def embeddings_table(ids: Sequence[str], vectors: Any, source_files: Sequence[str] | None = None,
                     surveys: Sequence[str] | None = None, meta: Mapping[str, Any] | None = None) -> Table:
    """Embeddings as a Table: ``id``, [``source_file``], [``survey``], ``embedding``.

    Parameters
    ----------
    ids : sequence of str
        One id per row (any string, newlines included).
    vectors : array (N, D)
        The embeddings, stored as float32 in one ``(N, D)`` column.
    source_files, surveys : sequence of str, optional
        Where each spectrum came from (columns omitted when not given).
    meta : mapping, optional
        Usually :func:`provenance_meta`; ``KIND`` is set to ``embeddings``.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array (N, D), got shape {vectors.shape}")
    n = vectors.shape[0]
    table = _table(meta, "embeddings")
    _add(table, "id", _strings(ids, n, "ids"))
    if source_files is not None:
        _add(table, "source_file", _strings(source_files, n, "source_files"))
    if surveys is not None:
        _add(table, "survey", _strings(surveys, n, "surveys"))
    _add(table, "embedding", vectors)
    return table


def anomaly_table(ids: Sequence[str], statistic: Any, noise_estimated: Any = None,
                  n_masks: int | None = None, seed: int | None = None,
                  meta: Mapping[str, Any] | None = None) -> Table:
    """Anomaly statistics as a Table: ``id``, ``anomaly`` and, when given, ``noise_estimated``.

    ``anomaly`` is the statistic behind the ``ANOMALY`` flag
    (:func:`omnispectra.api.anomaly_statistic`; NaN: too short to mask), ``noise_estimated``
    True where the spectrum had no uncertainties and the statistic used a noise estimated
    from its pixel-to-pixel differences. ``n_masks`` and ``seed`` go to ``meta``
    (``NMASKS``, ``MASKSEED``) when given.
    """
    statistic = np.atleast_1d(np.asarray(statistic, dtype=np.float64))
    table = _table(meta, "anomaly")
    _add(table, "id", _strings(ids, statistic.size, "ids"))
    _add(table, "anomaly", statistic)
    if noise_estimated is not None:
        estimated = np.atleast_1d(np.asarray(noise_estimated, dtype=bool))
        if estimated.shape != statistic.shape:
            raise ValueError(f"{estimated.size} noise_estimated values for {statistic.size} rows")
        _add(table, "noise_estimated", estimated)
    if n_masks is not None:
        table.meta["NMASKS"] = int(n_masks)
    if seed is not None:
        table.meta["MASKSEED"] = int(seed)
    return table


def quantity_unit(name: str) -> Any:
    """The astropy unit of a predicted quantity (``teff``: K, ``logg``: dex(cm / s2), ...) or None."""
    return _units().get(name)


def predictions_table(ids: Sequence[str], columns: Mapping[str, Any], meta: Mapping[str, Any] | None = None,
                      units: Mapping[str, Any] | None = None,
                      descriptions: Mapping[str, str] | None = None) -> Table:
    """Predictions as a Table: ``id`` then one column per entry of ``columns`` (in order).

    Known quantities get their units (:func:`quantity_unit`: ``teff`` in K, ``logg`` in
    ``dex(cm / s2)``, ``fe_h`` in dex, ``z`` dimensionless) unless ``units`` says
    otherwise; string columns (``class``) stay strings.
    """
    n = len(ids)
    table = _table(meta, "predictions")
    _add(table, "id", _strings(ids, n, "ids"))
    units = dict(units or {})
    descriptions = dict(descriptions or {})
    for name, values in columns.items():
        values = np.asarray(values)
        if values.shape[:1] != (n,):
            raise ValueError(f"column {name!r} has {values.shape[:1]} rows for {n} ids")
        if values.dtype.kind in "OUS":
            values = _strings(values, n, name)
            unit = None
        else:
            unit = units.get(name, quantity_unit(name))
        _add(table, name, values, unit, descriptions.get(name))
    return table


def reconstruction_table(reconstruction: Any, meta: Mapping[str, Any] | None = None) -> Table:
    """One reconstruction (:class:`omnispectra.api.Reconstruction`) as a one-row Table.

    Columns: ``id``, ``mse``, and array columns ``wavelength`` (Angstrom), ``flux`` and
    ``reconstruction`` (the input's flux unit, when it had one), ``pixel_masked``,
    ``token_wavelength`` (Angstrom) and ``token_mask``. Stack several with
    ``astropy.table.vstack`` when they have the same number of pixels; otherwise keep
    one table per spectrum. Read a row back as arrays: ``t["flux"][0]``.
    """
    from astropy import units as u

    rec = reconstruction
    unit = getattr(rec, "flux_unit", None) or getattr(getattr(rec, "flux", None), "unit", None)
    table = _table(meta, "reconstruction")

    def row(values: Any, dtype: Any) -> np.ndarray:
        return np.asarray(getattr(values, "value", values), dtype=dtype)[None, :]

    _add(table, "id", _strings([rec.id], 1, "id"))
    _add(table, "mse", np.asarray([rec.mse], dtype=np.float64))
    _add(table, "wavelength", row(rec.wavelength, np.float64), u.AA)
    flux_unit = None if unit is None else u.Unit(unit)
    _add(table, "flux", row(rec.flux, np.float64), flux_unit)
    _add(table, "reconstruction", row(rec.reconstruction, np.float64), flux_unit)
    _add(table, "pixel_masked", row(rec.pixel_masked, bool))
    _add(table, "token_wavelength", row(rec.token_wavelength, np.float64), u.AA)
    _add(table, "token_mask", row(rec.token_mask, bool))
    return table


#: Display formats of known float columns (how many digits mean something): probabilities to
#: 3 decimals, Teff to 1 K, logg and [Fe/H] to 0.01 dex, errors to 2 significant digits.
#: ``z`` has its own rule (:func:`z_format`). Only ``info.format`` is set (printed tables, the
#: ECSV ``format`` attribute); stored values are never rounded.
COLUMN_FORMATS = {
    "teff": ".0f", "teff_err": ".0f",
    "logg": ".2f", "logg_err": ".2f", "fe_h": ".2f", "fe_h_err": ".2f",
    "z_err": ".2g", "deltachi2": ".1f", "chi2": ".1f",
    "anomaly": ".3f", "mse": ".4g",
}

#: Fewest decimals of a redshift (1e-5), and most (beyond float64's meaning for z ~ 1).
Z_MIN_DECIMALS, Z_MAX_DECIMALS = 5, 10


def z_format(z_err: Any = None) -> str:
    """The format of a redshift column: 5 decimals, more when ``z_err`` is smaller.

    One decimal place per decade of the smallest finite positive ``z_err`` (so the first
    significant digit of every error is shown: ``z_err = 8.8e-06`` gives ``.6f``), never
    fewer than :data:`Z_MIN_DECIMALS` nor more than :data:`Z_MAX_DECIMALS`.
    """
    decimals = Z_MIN_DECIMALS
    if z_err is not None:
        err = np.asarray(getattr(z_err, "value", z_err), dtype=np.float64).ravel()
        err = err[np.isfinite(err) & (err > 0)]
        if err.size:
            decimals = int(np.clip(-np.floor(np.log10(err.min())), Z_MIN_DECIMALS, Z_MAX_DECIMALS))
    return f".{decimals}f"


def column_format(name: str, table: Table | None = None) -> str | None:
    """The display format of column ``name`` (None: no rule for it).

    ``prob_*`` columns get ``.3f``; ``z`` follows :func:`z_format` with the table's
    ``z_err`` column when ``table`` has one; others come from :data:`COLUMN_FORMATS`.
    """
    if name.startswith("prob_"):
        return ".3f"
    if name == "z":
        has_err = table is not None and "z_err" in table.colnames
        return z_format(table["z_err"] if has_err else None)
    return COLUMN_FORMATS.get(name)


def apply_formats(table: Table, replace: bool = False) -> Table:
    """Set ``info.format`` of the known float columns of ``table`` (in place; returns it).

    Values are untouched: the formats only change how the table prints and the ECSV
    ``format`` attribute. A column that already has a format keeps it unless ``replace``.
    """
    for name in table.colnames:
        col = table[name]
        if col.dtype.kind != "f" or (col.info.format is not None and not replace):
            continue
        fmt = column_format(name, table)
        if fmt is not None:
            col.info.format = fmt
    return table


def table_format(path: str | os.PathLike) -> str:
    """The astropy format :func:`write_table` uses for ``path`` (from its suffix).

    Raises
    ------
    OutputError
        A suffix that is none of ``.ecsv``, ``.fits``/``.fit``/``.fits.gz``, ``.h5``/``.hdf5``.
    """
    name = Path(path).name.lower()
    for suffix in sorted(TABLE_FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return TABLE_FORMATS[suffix]
    raise OutputError(f"cannot tell the table format of {path}: use one of "
                      f"{', '.join(TABLE_FORMATS)}")


def _fits_can_hold(unit: Any) -> bool:
    from astropy import units as u

    if isinstance(unit, u.FunctionUnitBase):  # dex(cm / s2): FITS has no function units
        return False
    try:  # plain dex is an irreducible unit that the FITS standard lacks
        unit.to_string(format="fits")
    except (ValueError, u.UnitsError):
        return False
    return True


def _for_fits(table: Table) -> Table:
    """A copy FITS can hold: units FITS lacks (dex) moved into descriptions, ASCII text checked,
    non-finite numbers in ``meta`` (a header holds none) written as the text ``"nan"``/``"inf"``."""
    out = table.copy(copy_data=False)
    for key, value in list(out.meta.items()):
        if isinstance(value, float) and not np.isfinite(value):
            out.meta[key] = str(value)
    for name in out.colnames:
        col = out[name]
        if col.unit is not None and not _fits_can_hold(col.unit):
            unit = col.unit.to_string()
            col.unit = None
            col.description = f"{col.description or name} [unit: {unit}]"
        if col.dtype.kind == "U":
            for k, value in enumerate(np.asarray(col).ravel()):
                if not str(value).isascii():
                    raise OutputError(
                        f"column {name!r} row {k} ({str(value)!r}) is not ASCII text, which FITS "
                        "cannot hold; write ECSV (.ecsv) or HDF5 (.h5) instead")
    return out


def write_table(table: Table, path: str | os.PathLike, overwrite: bool = False,
                inputs: Sequence[Any] = ()) -> Path:
    """Write a result Table so that ``Table.read(path)`` gives it back, atomically.

    The format follows the suffix (:func:`table_format`); known float columns get their display
    format (:func:`apply_formats`, on a copy: stored values are never rounded); HDF5 is written to the dataset
    ``data`` with ``serialize_meta=True`` (units and meta kept); FITS gets the conversions
    listed in the module docstring. The output is checked with
    :func:`omnispectra.fileio.check_output` first (call that yourself before long work).

    Raises
    ------
    OutputIsInputError, OutputExistsError
        See :func:`~omnispectra.fileio.check_output`.
    OutputError
        Unknown suffix, or text FITS cannot hold.
    """
    out = check_output(path, inputs, overwrite=overwrite)
    fmt = table_format(out)
    options: dict[str, Any] = {}
    table = apply_formats(table.copy(copy_data=False))
    if fmt == "fits":
        table = _for_fits(table)
    elif fmt == "hdf5":
        options = {"path": HDF5_PATH, "serialize_meta": True}
    with atomic_write(out) as tmp:
        table.write(tmp, format=fmt, **options)
    return out


def zbest_table(table: Table) -> Table:
    """A catalogue (``predict_redshift``, ``classify(full=True)``) with Redrock's zbest names.

    The columns of :data:`ZBEST_COLUMNS` renamed (``SPECTYPE``, ``SUBTYPE``, ``Z``, ``ZERR``,
    ``ZWARN`` = ``z_flag``, ``CHI2``, ``DELTACHI2``, ``COEFF``; ``TARGETID`` holds the id
    string), the other columns kept as they are, ``meta`` kept.

    Raises
    ------
    OutputError
        The table lacks the redshift columns.
    """
    missing = [name for name in ZBEST_COLUMNS if name not in table.colnames]
    if missing:
        raise OutputError(f"not a redshift catalogue: it lacks {', '.join(missing)} "
                          "(use predict_redshift or classify(full=True))")
    out = table.copy(copy_data=False)
    out.rename_columns(list(ZBEST_COLUMNS), list(ZBEST_COLUMNS.values()))
    return out
