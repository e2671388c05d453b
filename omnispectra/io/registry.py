"""The reader registry: registration, identification and :func:`read`.

Modelled on specutils' io registry (``@data_loader(label, identifier=..., priority=...)``)
but self-contained, so identification can work on headers read once per file and
the errors are omnispectra's.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astropy.io import fits

from ..exceptions import OmniSpectraError, SpectrumFormatError, UnknownFormatError
from ._common import SpectrumList, check_truncation
from .stitch import stitch_spectra

__all__ = [
    "FileProbe",
    "ReaderInfo",
    "register_reader",
    "get_reader",
    "list_formats",
    "identify_format",
    "identify_formats",
    "read",
    "probe_file",
]

_FITS_MAGIC = b"SIMPLE  ="
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class HDUSummary:
    """Header-level summary of one FITS HDU (no data is read)."""

    index: int
    name: str
    kind: str  # 'primary', 'image', 'compimage', 'bintable', 'table', 'other'
    raw_header: fits.Header | bytes  # bytes from the fast probe: parsed on first use of .header
    columns: tuple[str, ...] = ()  # upper-case column names of tables
    shape: tuple[int, ...] = ()

    @property
    def header(self) -> fits.Header:
        if not isinstance(self.raw_header, fits.Header):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.raw_header = fits.Header.fromstring(self.raw_header.decode("ascii", errors="replace"))
        return self.raw_header


@dataclass
class FileProbe:
    """What identifiers see: the file kind and its FITS headers or HDF5 keys, read once."""

    path: Path
    kind: str  # 'fits', 'hdf5' or 'other'
    hdus: list[HDUSummary] = field(default_factory=list)
    h5_keys: tuple[str, ...] = ()
    h5_attrs: dict = field(default_factory=dict)

    @property
    def primary(self) -> fits.Header:
        return self.hdus[0].header if self.hdus else fits.Header()

    def names(self) -> list[str]:
        return [h.name for h in self.hdus]

    def hdu(self, name: str) -> HDUSummary | None:
        name = name.upper()
        for h in self.hdus:
            if h.name == name:
                return h
        return None

    def all_columns(self) -> set[str]:
        out: set[str] = set()
        for h in self.hdus:
            out.update(h.columns)
        return out


def _sniff(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(_HDF5_MAGIC):
        return "hdf5"
    if head.startswith(_FITS_MAGIC):
        return "fits"
    if head.startswith(_GZIP_MAGIC):
        import gzip

        try:
            with gzip.open(path, "rb") as gz:
                inner = gz.read(16)
                # read to the end: a truncated stream would otherwise look like a FITS file
                # with fewer HDUs ("no reader recognises this file") or even read short
                while gz.read(1 << 22):
                    pass
        except EOFError as exc:
            raise SpectrumFormatError(f"{path}: truncated gzip file ({exc})") from exc
        except Exception as exc:
            raise SpectrumFormatError(f"{path}: corrupt gzip file ({type(exc).__name__}: {exc})") from exc
        if inner.startswith(_FITS_MAGIC):
            return "fits"
        return "other"
    return "other"


def probe_file(path: str | os.PathLike) -> FileProbe:
    """Read the headers of ``path`` once; SpectrumFormatError if missing/corrupt/truncated."""
    path = Path(path)
    if not path.exists():
        raise SpectrumFormatError(f"{path}: file not found")
    if path.is_dir():
        raise SpectrumFormatError(f"{path}: is a directory, not a spectrum file")
    try:
        kind = _sniff(path)
    except SpectrumFormatError:
        raise
    except OSError as exc:
        raise SpectrumFormatError(f"{path}: cannot be opened ({exc})") from exc
    probe = FileProbe(path=path, kind=kind)
    if kind == "fits" and not _probe_fits_fast(probe):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
                    for i, hdu in enumerate(hdul):
                        probe.hdus.append(_summarise(i, hdu))
            except OmniSpectraError:
                raise
            except Exception as exc:
                raise SpectrumFormatError(
                    f"{path}: corrupt or truncated FITS file ({type(exc).__name__}: {exc})"
                ) from exc
            check_truncation(path, caught)
        if not probe.hdus:
            raise SpectrumFormatError(f"{path}: FITS file without any HDU")
    elif kind == "hdf5":
        try:
            import h5py

            with h5py.File(path, "r") as h5:
                probe.h5_keys = tuple(h5.keys())
                probe.h5_attrs = {k: h5.attrs[k] for k in h5.attrs.keys()}
        except Exception as exc:
            raise SpectrumFormatError(f"{path}: corrupt HDF5 file ({type(exc).__name__}: {exc})") from exc
    return probe


def _probe_fits_fast(probe: FileProbe) -> bool:
    """Fill ``probe.hdus`` by walking the raw headers (:mod:`.fastfits`); False to use astropy.

    astropy's HDU objects (and a deep copy of every header) took ~50 ms per SDSS file;
    this walk reads the raw headers once; an HDU's :class:`~astropy.io.fits.Header` is
    built only when an identifier asks for it.  Anything unusual (a truncated or non-standard
    file, random groups, tile-compressed images) returns False and the astropy path decides.
    """
    from .fastfits import read_all_headers

    try:
        found = read_all_headers(probe.path)
    except Exception:
        return False
    hdus = []
    for i, (cards, raw) in enumerate(found):
        if cards.get("GROUPS") is True:
            return False
        xt = str(cards.get("XTENSION", "")).strip().upper()
        if xt == "BINTABLE" and cards.get("ZIMAGE") is True:
            return False  # tile-compressed image: astropy presents its image header
        if i == 0:
            kind = "primary"
        else:
            kind = {"IMAGE": "image", "BINTABLE": "bintable", "TABLE": "table"}.get(xt, "other")
        name = str(cards.get("EXTNAME", "") or "").strip().upper()
        if i == 0 and not name:
            name = "PRIMARY"
        columns: tuple[str, ...] = ()
        if kind in ("bintable", "table"):
            n = int(cards.get("TFIELDS", 0) or 0)
            columns = tuple(str(cards.get(f"TTYPE{k}", "") or "").strip().upper() for k in range(1, n + 1))
            shape: tuple[int, ...] = (int(cards.get("NAXIS2", 0) or 0),)
        else:
            naxis = int(cards.get("NAXIS", 0) or 0)
            shape = tuple(int(cards.get(f"NAXIS{k}", 0) or 0) for k in range(naxis, 0, -1))
        hdus.append(HDUSummary(index=i, name=name, kind=kind, raw_header=raw, columns=columns, shape=shape))
    probe.hdus = hdus
    return bool(hdus)


def _summarise(i: int, hdu) -> HDUSummary:
    header = hdu.header.copy()
    name = (hdu.name or "").upper()
    if isinstance(hdu, fits.PrimaryHDU):
        kind = "primary"
    elif isinstance(hdu, fits.CompImageHDU):
        kind = "compimage"
    elif isinstance(hdu, fits.ImageHDU):
        kind = "image"
    elif isinstance(hdu, fits.BinTableHDU):
        kind = "bintable"
    elif isinstance(hdu, fits.TableHDU):
        kind = "table"
    else:
        kind = "other"
    columns: tuple[str, ...] = ()
    shape: tuple[int, ...] = ()
    if kind in ("bintable", "table"):
        n = int(header.get("TFIELDS", 0))
        columns = tuple(str(header.get(f"TTYPE{k}", "")).strip().upper() for k in range(1, n + 1))
        shape = (int(header.get("NAXIS2", 0)),)
    else:
        if kind == "compimage":
            naxis = int(header.get("ZNAXIS", header.get("NAXIS", 0)))
            key = "ZNAXIS" if "ZNAXIS" in header else "NAXIS"
        else:
            naxis = int(header.get("NAXIS", 0))
            key = "NAXIS"
        shape = tuple(int(header.get(f"{key}{k}", 0)) for k in range(naxis, 0, -1))
    return HDUSummary(index=i, name=name, kind=kind, raw_header=header, columns=columns, shape=shape)


@dataclass(frozen=True)
class ReaderInfo:
    """One registered format."""

    name: str
    reader: Callable[..., list]
    identify: Callable[[FileProbe], bool]
    extensions: tuple[str, ...]
    priority: int
    produces_spectra: bool = True
    description: str = ""


_REGISTRY: dict[str, ReaderInfo] = {}


def register_reader(name: str, *, identify: Callable[[FileProbe], bool],
                    extensions: tuple[str, ...] = (".fits", ".fits.gz"), priority: int = 0,
                    produces_spectra: bool = True, force: bool = False):
    """Decorator registering ``func(path, **kwargs) -> list[Spectrum]`` as format ``name``.

    ``identify(probe)`` gets a :class:`FileProbe` and returns True for files of this
    format; an identifier that raises counts as "not this format".  Higher ``priority``
    readers are tried first.  ``produces_spectra=False`` marks detectors of known
    non-spectrum files (their reader raises :class:`NotASpectrumError`).
    """

    def deco(func):
        if name in _REGISTRY and not force and _REGISTRY[name].reader is not func:
            raise ValueError(f"reader {name!r} is already registered")
        doc = (func.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ReaderInfo(name=name, reader=func, identify=identify,
                                     extensions=tuple(extensions), priority=int(priority),
                                     produces_spectra=produces_spectra,
                                     description=doc[0] if doc else "")
        return func

    return deco


def _ordered() -> list[ReaderInfo]:
    return sorted(_REGISTRY.values(), key=lambda r: (-r.priority, r.name))


def list_formats(include_non_spectra: bool = False) -> list[str]:
    """Registered format identifiers, in the order auto-detection tries them.

    Detectors of known non-spectrum files (redrock, catalogues, Gaia XP) are listed
    only with ``include_non_spectra=True``.
    """
    return [r.name for r in _ordered() if include_non_spectra or r.produces_spectra]


def get_reader(name: str) -> ReaderInfo:
    """The :class:`ReaderInfo` of format ``name``; UnknownFormatError listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownFormatError(
            f"unknown format {name!r}; known formats: {', '.join(list_formats())}"
        ) from None


def _accepting(probe: FileProbe) -> Iterator[str]:
    """Names of the formats whose identifier accepts ``probe``, highest priority first.

    An identifier that raises means "not this format", never a crash.
    """
    for info in _ordered():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ok = bool(info.identify(probe))
        except Exception:
            ok = False
        if ok:
            yield info.name


def identify_formats(path: str | os.PathLike, probe: FileProbe | None = None) -> list[str]:
    """Every format whose identifier accepts ``path``, highest priority first."""
    return list(_accepting(probe or probe_file(path)))


def _first_format(probe: FileProbe) -> str:
    for name in _accepting(probe):
        return name
    kinds = {"fits": "a FITS file", "hdf5": "an HDF5 file", "other": "not FITS or HDF5"}
    detail = kinds[probe.kind]
    if probe.kind == "fits":
        detail += f" with HDUs {probe.names() or '[]'}"
    raise UnknownFormatError(
        f"{probe.path}: no reader recognises this file ({detail}); known formats: "
        f"{', '.join(list_formats())}"
    )


def identify_format(path: str | os.PathLike) -> str:
    """The format :func:`read` would use for ``path`` (UnknownFormatError if none)."""
    return _first_format(probe_file(path))


def read(path: str | os.PathLike, format: str | None = None, stitch: bool = True,
         **kwargs: Any) -> SpectrumList:
    """Read every spectrum in ``path`` as a :class:`specutils.SpectrumList` (always a list).

    ``format`` forces a reader (see :func:`list_formats`); otherwise the identifiers
    pick one.  With ``stitch=True`` (default) the echelle orders, arms or detector segments
    of one target that the reader declares (:mod:`omnispectra.io.stitch`) come back as one
    spectrum on their native pixels; ``stitch=False`` keeps them apart.  Fibres of a
    multi-object file are never stitched.  Extra keyword arguments go to the reader.  All
    failures are omnispectra errors naming the file: SpectrumFormatError
    (missing/corrupt/lacking HDUs), UnknownFormatError, NotASpectrumError,
    InvalidSpectrumError.
    """
    path = Path(path)
    if format is not None:
        info = get_reader(format)
        if not path.exists():
            raise SpectrumFormatError(f"{path}: file not found")
    else:
        info = get_reader(_first_format(probe_file(path)))
        if info.name == "specutils":
            # The fallback's identifiers are loose (e.g. any BinTable); when it was only
            # chosen because nothing else matched, its failure means "unknown format".
            try:
                return read(path, format="specutils", stitch=stitch, **kwargs)
            except SpectrumFormatError as exc:
                raise UnknownFormatError(
                    f"{path}: no omnispectra reader recognises this file and specutils' loaders "
                    f"failed ({exc}); known formats: {', '.join(list_formats())}") from exc
    try:
        with warnings.catch_warnings():
            # Readers record header problems in meta['header_warnings'] instead.
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)
            result = info.reader(path, **kwargs)
    except OmniSpectraError:
        raise
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise
        raise SpectrumFormatError(
            f"{path}: cannot be read as format {info.name!r} ({type(exc).__name__}: {exc})"
        ) from exc
    except Exception as exc:
        raise SpectrumFormatError(
            f"{path}: cannot be read as format {info.name!r} ({type(exc).__name__}: {exc})"
        ) from exc
    out = SpectrumList(stitch_spectra(list(result)) if stitch else list(result))
    skipped: list[str] = []
    records: list[dict] = []
    for spec in out:
        for msg in (spec.meta or {}).get("skipped_rows_in_file", ()):
            if msg not in skipped:
                skipped.append(msg)
        for record in (spec.meta or {}).get("skipped_in_file", ()):
            if record not in records:
                records.append(record)
    #: Messages of rows/arms of this file that were skipped as invalid (see the contract).
    out.skipped = skipped
    #: ``{"id", "reason"}`` of every spectrum of this file that was not returned.
    out.skipped_in_file = records
    return out
