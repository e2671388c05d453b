"""Helpers shared by the survey readers: opening FITS files safely, building
contract-conforming :class:`specutils.Spectrum` objects, units, air->vacuum, ids."""

from __future__ import annotations

import functools
import math
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.nddata import InverseVariance

try:  # specutils >= 2.0
    from specutils import Spectrum
except ImportError:  # pragma: no cover - specutils 1.x
    from specutils import Spectrum1D as Spectrum

from specutils import SpectrumList
from specutils.utils.wcs_utils import air_to_vac

from ..exceptions import InvalidSpectrumError, SpectrumFormatError, UnitsError

__all__ = [
    "Spectrum",
    "SpectrumList",
    "FitsFile",
    "open_fits",
    "file_stem",
    "build_spectrum",
    "err_to_ivar",
    "placeholder_ivar",
    "uncertainty_to_ivar",
    "air_to_vacuum",
    "parse_unit",
    "radec_object_id",
    "base_meta",
    "put_label",
    "put_class",
    "FLUX_1E17",
    "WAVELENGTH_LIMITS_AA",
    "PLAUSIBLE_ANGSTROM",
    "check_wavelength_axis",
    "flux_unit_from_header",
    "survey_from_header",
    "finish_rows",
    "skipped_record",
]

#: The SDSS/BOSS/DESI/APOGEE flux density unit.
FLUX_1E17 = u.Unit("1e-17 erg / (s cm2 Angstrom)")

#: Sentinel values that mean "missing" in the surveys' label columns.
MISSING_SENTINELS = (-9999.0, 9999.0, 99999.0, -99999.0)

_FITS_SUFFIXES = (".fits.gz", ".fit.gz", ".fts.gz", ".fits.fz", ".fits", ".fit", ".fts", ".fz")


def file_stem(path: str | Path) -> str:
    """File name without the FITS/HDF5 suffixes (``spec-1-2-3.fits.gz`` -> ``spec-1-2-3``)."""
    name = Path(path).name
    low = name.lower()
    for suf in _FITS_SUFFIXES + (".hdf5", ".h5"):
        if low.endswith(suf):
            return name[: -len(suf)]
    if low.endswith(".gz"):  # spec.txt.gz -> spec
        name = name[:-3]
    return Path(name).stem


class FitsFile:
    """An open, read-only FITS file with helpers that raise package errors.

    Attributes
    ----------
    path : pathlib.Path
    hdul : astropy.io.fits.HDUList
    warnings : list of str
        Messages of warnings astropy emitted while the file was read (e.g. the
        non-standard header cards of some APOGEE files).  Readers copy them into
        ``meta['header_warnings']`` instead of re-emitting them.
    """

    def __init__(self, path: Path, hdul: fits.HDUList):
        self.path = path
        self.hdul = hdul
        self.warnings: list[str] = []

    def __len__(self) -> int:
        return len(self.hdul)

    def names(self) -> list[str]:
        return [h.name.upper() for h in self.hdul]

    def has(self, key: str | int) -> bool:
        if isinstance(key, int):
            return 0 <= key < len(self.hdul)
        return key.upper() in self.names()

    def hdu(self, key: str | int, what: str = "") -> Any:
        """The HDU ``key`` (name or index); SpectrumFormatError naming the file when absent."""
        if self.has(key):
            return self.hdul[key.upper() if isinstance(key, str) else key]
        extra = f" ({what})" if what else ""
        raise SpectrumFormatError(
            f"{self.path}: expected HDU {key!r}{extra} is missing; the file has "
            f"{len(self.hdul)} HDUs: {self.names()}"
        )

    def header(self, key: str | int = 0) -> fits.Header:
        return self.hdu(key).header

    def image(self, key: str | int, what: str = "") -> np.ndarray:
        """A copy of an image HDU's data as float64 (or the raw dtype for integer masks)."""
        h = self.hdu(key, what)
        if h.data is None:
            raise SpectrumFormatError(f"{self.path}: HDU {key!r} ({what or 'image'}) holds no data")
        return np.array(h.data)

    def table(self, key: str | int, columns: tuple[str, ...] = (), what: str = "") -> Any:
        """A BinTable HDU's data; SpectrumFormatError when it lacks one of ``columns``."""
        h = self.hdu(key, what)
        if not isinstance(h, (fits.BinTableHDU, fits.TableHDU)):
            raise SpectrumFormatError(f"{self.path}: HDU {key!r} is not a table (it is {type(h).__name__})")
        names = [c.upper() for c in h.columns.names]
        missing = [c for c in columns if c.upper() not in names]
        if missing:
            raise SpectrumFormatError(
                f"{self.path}: table HDU {key!r} lacks column(s) {missing}; it has {h.columns.names}"
            )
        return h.data


_TRUNCATION_HINTS = ("truncated", "buffer is too small", "missing end card", "unexpected end")


@contextmanager
def open_fits(path: str | Path) -> Iterator[FitsFile]:
    """Open ``path`` read-only (``memmap=False``) and close it afterwards.

    Missing, empty, truncated or corrupt files raise :class:`SpectrumFormatError`
    naming the file.  Warnings astropy emits are captured into ``FitsFile.warnings``.
    """
    path = Path(path)
    if not path.exists():
        raise SpectrumFormatError(f"{path}: file not found")
    if path.is_dir():
        raise SpectrumFormatError(f"{path}: is a directory, not a spectrum file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            hdul = fits.open(path, memmap=False, lazy_load_hdus=True, mode="readonly")
        except Exception as exc:  # OSError, ValueError, EOFError, gzip errors ...
            raise SpectrumFormatError(
                f"{path}: not a readable FITS file ({type(exc).__name__}: {exc})") from exc
        ff = FitsFile(path, hdul)
        try:
            try:
                hdul.readall()
            except Exception as exc:
                raise SpectrumFormatError(
                    f"{path}: corrupt or truncated FITS file ({type(exc).__name__}: {exc})"
                ) from exc
            check_truncation(path, caught)
            yield ff
        finally:
            hdul.close()
            ff.warnings.extend(_messages(caught))


def _messages(caught) -> list[str]:
    out = []
    for w in caught:
        msg = str(w.message).strip()
        if msg and msg not in out:
            out.append(msg)
    return out


def check_truncation(path: Path, caught) -> None:
    for w in caught:
        msg = str(w.message).lower()
        if any(h in msg for h in _TRUNCATION_HINTS):
            raise SpectrumFormatError(f"{path}: truncated FITS file ({str(w.message).strip()})")


def parse_unit(text: Any) -> u.UnitBase | None:
    """Parse a flux unit string as written by the surveys; None when not parseable.

    Handles ``'1E-17 erg/cm^2/s/Ang'`` (SDSS), ``'Flux (10^-17 erg/s/cm^2/Ang)'`` (APOGEE),
    ``'10**(-19).erg.cm**(-2).s**(-1).angstrom**(-1)'`` (ESO) and plain astropy strings.
    """
    if text is None:
        return None
    s = str(text).strip()
    return _parse_unit_text(s) if s else None


@functools.lru_cache(maxsize=256)
def _parse_unit_text(s: str) -> u.UnitBase | None:
    # astropy's failed parse (with its "did you mean" message) costs ~30 ms; files of one
    # survey repeat a handful of unit strings, so each is parsed once.
    cands = [s]
    m = re.match(r"^[A-Za-z][A-Za-z ]*\((.*)\)\s*$", s)
    if m:
        cands.append(m.group(1).strip())
    more = []
    for c in cands:
        c2 = re.sub(r"\bAngstroms?\b|\bAng\b|\bA\b(?=\s*$)", "Angstrom", c)
        more.append(c2)
        more.append(c2.replace("^", ""))
    for c in cands + more:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                unit = u.Unit(c, parse_strict="raise")
            except Exception:
                continue
        if isinstance(unit, u.UnrecognizedUnit):
            continue
        return unit
    return None


def air_to_vacuum(wave_air_angstrom: np.ndarray) -> np.ndarray:
    """Air -> vacuum wavelengths in Angstrom with :func:`specutils.utils.wcs_utils.air_to_vac`
    (Morton 2000 refractive index, exact inversion)."""
    w = np.asarray(wave_air_angstrom, dtype=np.float64)
    return np.asarray(air_to_vac(w * u.AA, scheme="inversion", method="Morton2000").to_value(u.AA))


def uncertainty_to_ivar(values: np.ndarray, kind: str) -> np.ndarray:
    """Inverse variance (float64) from ``kind`` = ``'sigma'``, ``'var'`` or ``'ivar'`` values;
    0 where the input is non-positive or non-finite (or its inverse overflows)."""
    a = np.asarray(values, dtype=np.float64)
    if kind == "sigma":
        return err_to_ivar(a)
    if kind == "var":
        with np.errstate(divide="ignore", over="ignore"):
            ivar = np.where(np.isfinite(a) & (a > 0), 1.0 / np.where(a > 0, a, 1.0), 0.0)
        ivar[~np.isfinite(ivar)] = 0.0
        return ivar
    if kind == "ivar":
        return np.where(np.isfinite(a) & (a > 0), a, 0.0)
    raise ValueError(f"unknown uncertainty kind {kind!r}")


def placeholder_ivar(flux: np.ndarray) -> np.ndarray:
    """Inverse variance for a file without errors: 1 where the flux is finite, else 0.

    Readers that use it also set ``meta['ivar_is_placeholder'] = True``.
    """
    return np.where(np.isfinite(flux), 1.0, 0.0)


def err_to_ivar(err: np.ndarray, bad_above: float | None = None) -> np.ndarray:
    """1/err**2, with ivar = 0 where err <= 0, err is non-finite, or err >= ``bad_above``."""
    e = np.asarray(err, dtype=np.float64)
    good = np.isfinite(e) & (e > 0)
    if bad_above is not None:
        good &= e < bad_above
    ivar = np.zeros_like(e)
    ivar[good] = 1.0 / e[good] ** 2
    ivar[~np.isfinite(ivar)] = 0.0
    return ivar


def radec_object_id(ra: Any, dec: Any) -> str | None:
    """``'radec:RRR.RRRRR+DD.DDDDD'`` with RA/Dec rounded to the nearest whole arcsecond
    (so repeat observations of one star/galaxy, whose catalogue positions differ by
    ~0.1", share the id).  None when RA/Dec are missing."""
    try:
        ra = float(ra)
        dec = float(dec)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(ra) and math.isfinite(dec)) or not (-90.0 <= dec <= 90.0):
        return None
    ra_as = int(round((ra % 360.0) * 3600.0)) % (360 * 3600)
    dec_as = int(round(dec * 3600.0))
    return f"radec:{ra_as / 3600.0:09.5f}{dec_as / 3600.0:+09.5f}"


def base_meta(path: str | Path, fmt: str, survey: str, *, id: str, object_id: str | None,
              rest_frame: bool = False, medium: str = "vacuum") -> dict:
    """The meta keys every reader fills (see the contract in :mod:`omnispectra.io`)."""
    return {
        "id": str(id),
        "object_id": str(object_id) if object_id not in (None, "") else str(id),
        "survey": survey,
        "source_file": str(Path(path).resolve()),
        "format": fmt,
        "rest_frame": bool(rest_frame),
        "medium": medium,
    }


def _as_float(value: Any) -> float | None:
    try:
        if isinstance(value, (bytes, np.bytes_)):
            value = value.decode()
        if isinstance(value, str):
            value = value.strip()
            if value in ("", "--", "nan", "NaN"):
                return None
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def put_label(meta: dict, key: str, value: Any, *, missing: tuple = MISSING_SENTINELS,
              valid=None) -> None:
    """Store a numeric label unless it is None/NaN/a sentinel (or fails ``valid``)."""
    f = _as_float(value)
    if f is None or any(abs(f - m) < 1e-6 for m in missing):
        return
    if valid is not None and not valid(f):
        return
    meta[key] = f


def put_text(meta: dict, key: str, value: Any) -> None:
    """Store a stripped string unless empty."""
    if value is None:
        return
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode(errors="replace")
    s = str(value).strip()
    if s:
        meta[key] = s


def put_class(meta: dict, value: Any) -> None:
    """Store ``class`` as upper-case GALAXY/QSO/STAR; other values go to ``class_raw``."""
    if value is None:
        return
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode(errors="replace")
    s = str(value).strip().upper()
    if not s:
        return
    aliases = {"GAL": "GALAXY", "GALAXY": "GALAXY", "QSO": "QSO", "QUASAR": "QSO", "STAR": "STAR"}
    if s in aliases:
        meta["class"] = aliases[s]
    else:
        meta["class_raw"] = s


def _valid_wave_msg(path, wave) -> None:
    d = np.diff(wave)
    bad = np.nonzero(~(d > 0))[0]
    i = int(bad[0])
    raise InvalidSpectrumError(
        f"{path}: wavelengths are not strictly increasing (pixel {i}: {wave[i]:.6g} -> "
        f"pixel {i + 1}: {wave[i + 1]:.6g}; {bad.size} non-increasing steps)"
    )


def build_spectrum(wave: np.ndarray, flux: np.ndarray, ivar: np.ndarray, *, meta: dict,
                   flux_unit: u.UnitBase | None = None, mask: np.ndarray | None = None,
                   path: str | Path | None = None) -> Spectrum:
    """Validate arrays and build a 1-D :class:`Spectrum` that meets the io contract.

    ``wave`` must already be in vacuum Angstrom.  A strictly *decreasing* axis is reversed;
    any other non-monotonic axis raises :class:`InvalidSpectrumError`, as do NaN-only flux
    and all-zero inverse variance.  Non-finite flux is replaced by 0 and masked; negative or
    non-finite ivar becomes 0.  ``mask`` (True = bad) is OR-ed with ``ivar <= 0`` and
    non-finite flux.
    """
    where = f"{path or meta.get('source_file', '?')}" + (f" [{meta['id']}]" if "id" in meta else "")
    wave = np.asarray(wave, dtype=np.float64).ravel()
    flux = np.array(flux, dtype=np.float64).ravel()
    ivar = np.array(ivar, dtype=np.float64).ravel()
    mask = np.zeros(flux.shape, bool) if mask is None else np.asarray(mask, dtype=bool).ravel().copy()
    if not (wave.shape == flux.shape == ivar.shape == mask.shape):
        raise InvalidSpectrumError(
            f"{where}: array shapes differ (wave {wave.shape}, flux {flux.shape}, ivar {ivar.shape}, "
            f"mask {mask.shape})"
        )
    if wave.size < 2:
        raise InvalidSpectrumError(f"{where}: spectrum has {wave.size} pixel(s)")
    if not np.all(np.isfinite(wave)):
        raise InvalidSpectrumError(f"{where}: wavelength array contains NaN/inf")
    d = np.diff(wave)
    if not np.all(d > 0):
        if np.all(d < 0):
            wave, flux = wave[::-1].copy(), flux[::-1].copy()
            ivar, mask = ivar[::-1].copy(), mask[::-1].copy()
        else:
            _valid_wave_msg(where, wave)
    if wave[0] <= 0:
        raise InvalidSpectrumError(f"{where}: non-positive wavelength {wave[0]}")
    check_wavelength_axis(wave, where)
    finite = np.isfinite(flux)
    if not finite.any():
        raise InvalidSpectrumError(f"{where}: flux is NaN/inf at every pixel")
    ivar[~np.isfinite(ivar) | (ivar < 0)] = 0.0
    if not np.any(ivar > 0):
        raise InvalidSpectrumError(f"{where}: inverse variance is zero (or invalid) at every pixel")
    flux[~finite] = 0.0
    mask |= ~finite | (ivar <= 0)
    if mask.all():
        raise InvalidSpectrumError(f"{where}: every pixel is masked as bad")
    unit = u.dimensionless_unscaled if flux_unit is None else u.Unit(flux_unit)
    meta = dict(meta)
    return Spectrum(
        spectral_axis=wave * u.AA,
        flux=flux * unit,
        uncertainty=InverseVariance(ivar, unit=unit ** -2),
        mask=mask,
        meta=meta,
    )


_ERROR_ID = re.compile(r" \[([^\]]+)\]: ")


def skipped_record(error: Exception) -> dict:
    """``{"id", "reason"}`` for a spectrum of a file that was not returned; the id is the one
    :func:`build_spectrum` writes into its messages (``<path> [<id>]: ...``), else None."""
    m = _ERROR_ID.search(str(error))
    return {"id": m.group(1) if m else None, "reason": str(error)}


def finish_rows(spectra: list, errors: list) -> list:
    """Close a many-spectra read: fail when no spectrum was usable, else name the skipped ones.

    ``errors`` holds the :class:`InvalidSpectrumError` of every spectrum of the file that was not
    returned; with no usable spectrum the first of them is raised.  Otherwise every returned spectrum
    records ``meta['n_spectra_in_file']`` (returned + skipped: what the file holds) and, when some
    were skipped, ``meta['skipped_in_file']`` (a list of ``{"id", "reason"}``, issue 25 #7) and the
    messages in ``meta['skipped_rows_in_file']``.
    """
    if not spectra and errors:
        raise errors[0]
    records = [skipped_record(e) for e in errors]
    for spectrum in spectra:
        spectrum.meta["n_spectra_in_file"] = len(spectra) + len(errors)
        if errors:
            spectrum.meta["skipped_rows_in_file"] = [str(e) for e in errors]
            spectrum.meta["skipped_in_file"] = [dict(r) for r in records]
    return spectra


# ---------------------------------------------------------------------------------------------
# Wavelength-axis sanity and header conventions shared by the image readers (issue 12).
# ---------------------------------------------------------------------------------------------

#: Vacuum-Angstrom range a UV/optical/IR spectrum must lie in (far-UV 100 A to far-IR 100 um).
#: Radio frequencies, X-ray energies and pixel indices of short spectra fall outside.
WAVELENGTH_LIMITS_AA = (100.0, 1.0e6)
#: Range (Angstrom) unit-less wavelengths must lie in to be taken as Angstrom (table and image
#: readers alike); outside it a file must say its unit.
PLAUSIBLE_ANGSTROM = (900.0, 60000.0)


def check_wavelength_axis(wave: np.ndarray, where: str) -> None:
    """Refuse an increasing axis in Angstrom that is really the pixel index, or not UV/optical/IR.

    Raises
    ------
    UnitsError
        ``wave`` is exactly ``0..N-1`` or ``1..N`` (a reader took the pixel index for the
        wavelength), or it leaves :data:`WAVELENGTH_LIMITS_AA`.
    """
    if wave.size >= 3 and wave[0] in (0.0, 1.0) and np.all(np.diff(wave) == 1.0):
        raise UnitsError(
            f"{where}: the wavelength axis is the pixel index {wave[0]:g}..{wave[-1]:g}, not a wavelength "
            f"(the file has no spectral WCS or wavelength array); refused")
    lo, hi = WAVELENGTH_LIMITS_AA
    if wave[0] < lo or wave[-1] > hi:
        raise UnitsError(
            f"{where}: wavelengths {wave[0]:.4g}-{wave[-1]:.4g} Angstrom leave the UV/optical/IR range "
            f"{lo:g}-{hi:g} Angstrom; refused")


#: Flux units a spectrum may carry (flux densities, counts, rates); other parsed units are kept
#: only as the header string.
_FLUX_LIKE = (u.erg / u.s / u.cm ** 2 / u.AA, u.Jy, u.count, u.adu, u.electron, u.count / u.s,
              u.electron / u.s, u.adu / u.s, u.count / u.AA, u.W / u.m ** 2 / u.m)


def flux_unit_from_header(text: Any) -> tuple[u.UnitBase | None, str | None]:
    """``(unit, raw)`` for a ``BUNIT``-like string: the parsed flux unit (SDSS-style scale prefixes
    such as ``'1E-17 erg/cm^2/s/Ang'`` included) or None when it is not a flux-like unit astropy can
    parse (``'DU/PIXEL'``), and the raw string (None when absent) for ``meta['flux_unit_header']``.
    """
    if text is None or not str(text).strip():
        return None, None
    raw = str(text).strip()
    # A lone 'A' in a flux unit is Angstrom, never Ampere ('erg/cm2/s/A').
    unit = parse_unit(re.sub(r"(?<![A-Za-z])A(?![A-Za-z])", "Angstrom", raw))
    if unit is None or unit == u.dimensionless_unscaled:
        return None, raw
    if not any(unit.is_equivalent(ref) for ref in _FLUX_LIKE):
        return None, raw
    return unit, raw


def survey_from_header(header) -> str:
    """Survey label for a file no survey reader claimed: the slugged ``TELESCOP`` and ``INSTRUME``
    (``'ljt:yfosc_ysu'``), else ``'unknown'``.  Never mapped to a survey name: one telescope serves
    several surveys (the SDSS 2.5-m: SDSS, APOGEE; the UKST: 6dFGS, RAVE)."""
    tel = str(header.get("TELESCOP", "") or "").strip()
    inst = str(header.get("INSTRUME", "") or "").strip()
    parts = [re.sub(r"[^a-z0-9.+-]+", "_", p.lower()).strip("_") for p in (tel, inst) if p]
    label = ":".join(p for p in parts if p)
    return label or "unknown"
