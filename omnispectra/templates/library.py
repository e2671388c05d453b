"""Rest-frame template sources: Redrock bases and the PyHammer stellar composites.

Files (see ``../shared/data/SOURCES.md``, folder ``templates/``):

* ``redrock/rrtemplate-*.fits[.gz]``: HDU0 a basis (n_basis, n_wave) with ``RRTYPE``,
  ``RRSUBTYP``, ``CRVAL1``, ``CDELT1`` and ``LOGLAM`` (1: log10 axis); galaxy and STAR
  A/B/F/G/K/M/WD files carry ``ARCHETYPE_COEFF`` rows (the coefficients of the real
  template spectra the basis was made from).
* ``pyhammer/<type>[_<[Fe/H]>_Dwarf].fits[.gz]``: one empirical BOSS composite each
  (HDU1 ``LogLam``, ``Flux``); class STAR, spectral type and [Fe/H] in the file name.

Every template is put on a **uniform log10-wavelength rest-frame grid** at load time.
The Redrock star and galaxy bases are sampled every 0.1 A on a linear axis; they are
*bin-averaged* (flux-conserving, :func:`~omnispectra.templates.resample.rebin`) onto a
``dloglam = 2e-5`` grid (14 km/s pixels, five per SDSS pixel) rather than sampled at
pixel centres, which would alias their sharp lines. Log-sampled files keep their step.

Validation: every Redrock file is checked when loaded (:func:`check_basis`, header keys
``RRTYPE``/``CRVAL1``/``CDELT1``, a wavelength axis that strictly increases inside
:data:`REST_WAVE_RANGE`): a degenerate basis (all zeros, NaN, a repeated vector) or a
broken header is refused with a one-line :class:`~omnispectra.exceptions.InvalidTemplatesError`
naming the file, never fitted.

Compact form: :func:`write_compact` stores a library's Redrock bases as they are *after*
loading (uniform log10 grid, float32) in one ``.npz`` file (no pickles: :func:`load_compact`
reads it with ``allow_pickle=False``); the package ships one (see
:mod:`omnispectra.pretrained`), built by ``scripts/make_compact_templates.py``.

Resolution: each :class:`TemplateBasis` records the Gaussian sigma (km/s) of its own
line spread. The QSO/CV bases and the PyHammer composites come from SDSS/BOSS spectra
(R ~ 2000: sigma 64 km/s); the Redrock star and galaxy bases are treated as
unresolved (sigma 0). The observer broadens only downward: a template is never put on
a grid whose line spread is narrower than its own, unless the source's own features
are much wider than both (quasars: :data:`QSO_INTRINSIC_SIGMA_KMS`), so that the
template's line spread changes what the sharper grid would show by a few per cent
(:meth:`TemplateBasis.line_width_ratio`). That is why quasars go onto DESI, LAMOST MRS,
X-shooter and LEGA-C grids while the PyHammer stars do not.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from ..exceptions import InvalidTemplatesError, OmniSpectraError, TemplatesNotFoundError
from ..fileio import atomic_write
from .resample import C_KMS, rebin

__all__ = [
    "FINE_DLOGLAM",
    "COMPACT_FORMAT",
    "COMPACT_FORMAT_VERSION",
    "MAX_BASIS_VECTORS",
    "PIXEL_RANGE",
    "REST_WAVE_RANGE",
    "SPECTYPES",
    "SURVEY_GRADE_SIGMA_KMS",
    "QSO_INTRINSIC_SIGMA_KMS",
    "TemplateBasis",
    "TemplateLibrary",
    "load_redrock",
    "load_pyhammer",
    "load_library",
    "templates_directory",
    "check_basis",
    "write_compact",
    "load_compact",
]

logger = logging.getLogger(__name__)

#: log10 step of the grid linear (0.1 A) templates are bin-averaged onto.
FINE_DLOGLAM = 2e-5
#: Line-spread sigma of templates built from SDSS/BOSS spectra (R ~ 2000).
SURVEY_GRADE_SIGMA_KMS = C_KMS / (2000.0 * 2.3548)
#: Gaussian sigma of the narrowest *intrinsic* features of quasar spectra: the narrow
#: forbidden lines of the narrow-line region ([O III] 5007 has sigma ~ 150-400 km/s;
#: broad lines are far wider). Convolving 150 km/s with the bases' own 64 km/s widens
#: them by only 9%, so the R ~ 2000 QSO bases are faithful on any sharper grid too.
QSO_INTRINSIC_SIGMA_KMS = 150.0

#: Classes a Redrock basis may have (header ``RRTYPE``).
SPECTYPES = ("GALAXY", "QSO", "STAR")
#: Bounds of a loadable basis: far beyond any real one (Redrock's have 3-5 vectors of
#: 8,600-88,000 pixels), tight enough to refuse a corrupt header before it is used.
MAX_BASIS_VECTORS = 64
PIXEL_RANGE = (16, 2_000_000)
#: Rest-frame wavelengths (Angstrom) a template may cover.
REST_WAVE_RANGE = (10.0, 1.0e6)
#: Tag and version of the compact template file (:func:`write_compact`).
COMPACT_FORMAT = "omnispectra-templates"
COMPACT_FORMAT_VERSION = 1
# fixed zip member time, so that the same library always gives the same bytes
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)

_PYHAMMER_NAME = re.compile(r"^(?P<type>[OBAFGKML]\d(?:\.\d)?)(?:_(?P<feh>[+-]\d\.\d)_Dwarf)?$")


@dataclass
class TemplateBasis:
    """One template file on a uniform rest-frame log10-wavelength grid.

    Attributes
    ----------
    name : str
        ``redrock:STAR-K``, ``redrock:QSO-LOZ``, ``pyhammer:M2_+0.0_Dwarf`` ...
    spectype : str
        ``GALAXY``, ``QSO`` or ``STAR``.
    subtype : str
        Redrock ``RRSUBTYP`` (A, B, ..., WD, CV, LOZ, HIZ) or the composite's spectral type.
    loglam0, dloglam : float
        Pixel ``i`` is at ``10**(loglam0 + dloglam * i)`` Angstrom (rest frame, vacuum).
    basis : (n_basis, n_pix) array
        Flux basis; a composite is a basis of one vector.
    archetypes : (n_rows, n_basis) array or None
        Coefficient rows of real template spectra (Redrock ``ARCHETYPE_COEFF``).
    sigma_kms : float
        Gaussian sigma of the template's own line spread.
    intrinsic_sigma_kms : float
        Gaussian sigma of the source's narrowest intrinsic features (0: unknown or
        unresolved, e.g. stellar absorption lines); see :meth:`line_width_ratio`.
    fe_h : float
        [Fe/H] of a PyHammer dwarf composite (NaN otherwise). A 0.5-dex bin: metadata,
        never a training label.
    """

    name: str
    spectype: str
    subtype: str
    loglam0: float
    dloglam: float
    basis: np.ndarray
    archetypes: np.ndarray | None = None
    sigma_kms: float = 0.0
    intrinsic_sigma_kms: float = 0.0
    fe_h: float = float("nan")
    source: str = ""

    def line_width_ratio(self, target_sigma_kms: float) -> float:
        """How much wider this template's sharpest features are than the same features
        seen through a line spread of ``target_sigma_kms``: ``sqrt(s_t^2 + s_i^2) /
        sqrt(s_target^2 + s_i^2)`` with ``s_t`` the template's own line spread and ``s_i``
        the source's intrinsic width (1 or less: the template may be broadened to the target)."""
        own = np.hypot(self.sigma_kms, self.intrinsic_sigma_kms)
        target = np.hypot(float(target_sigma_kms), self.intrinsic_sigma_kms)
        return float(own / target) if target > 0 else (1.0 if own == 0 else float("inf"))

    @property
    def n_pix(self) -> int:
        return int(self.basis.shape[1])

    @property
    def loglam(self) -> np.ndarray:
        return self.loglam0 + self.dloglam * np.arange(self.n_pix)

    @property
    def rest_range(self) -> tuple[float, float]:
        """Wavelength range (A) of the pixel centres."""
        return 10 ** self.loglam0, 10 ** (self.loglam0 + self.dloglam * (self.n_pix - 1))

    def flux(self, coeff: np.ndarray) -> np.ndarray:
        """Rest-frame flux of coefficients ``coeff`` (n_basis,)."""
        return np.asarray(coeff, dtype=np.float64) @ self.basis


@dataclass
class TemplateLibrary:
    """The templates the engine draws from, grouped by class."""

    templates: list[TemplateBasis] = field(default_factory=list)
    #: Provenance of a compact file (``release``, the source files and their sha256).
    info: dict[str, Any] = field(default_factory=dict)

    def by_class(self, spectype: str) -> list[TemplateBasis]:
        return [t for t in self.templates if t.spectype == spectype]

    def get(self, name: str) -> TemplateBasis:
        for t in self.templates:
            if t.name == name:
                return t
        raise KeyError(name)

    def __len__(self) -> int:
        return len(self.templates)


def templates_directory(directory: str | os.PathLike | None = None) -> Path:
    """The template folder (or compact ``.npz`` file): ``directory``, else ``$OMNISPECTRA_TEMPLATES``.

    Raises
    ------
    TemplatesNotFoundError
        Neither is given, or the path is neither a folder nor an ``.npz`` file.
    """
    path = directory or os.environ.get("OMNISPECTRA_TEMPLATES")
    if not path:
        raise TemplatesNotFoundError("no template directory: pass one or set OMNISPECTRA_TEMPLATES "
                                     "(a folder with redrock/ and/or pyhammer/ subfolders)")
    path = Path(path)
    if not (path.is_dir() or (path.is_file() and path.suffix == ".npz")):
        raise TemplatesNotFoundError(f"template directory {path} does not exist")
    return path


def _to_log_grid(wave: np.ndarray, basis: np.ndarray, dloglam: float) -> tuple[float, np.ndarray]:
    """Bin-average ``basis`` (n_b, n) sampled at ``wave`` onto a uniform log10 grid inside it."""
    lo, hi = np.log10(wave[0]), np.log10(wave[-1])
    n = int(np.floor((hi - lo) / dloglam)) - 1
    loglam0 = lo + dloglam
    grid = 10 ** (loglam0 + dloglam * np.arange(n))
    out = rebin(wave, basis, grid)
    good = np.all(np.isfinite(out), axis=0)
    first, last = np.flatnonzero(good)[[0, -1]]
    return loglam0 + dloglam * first, out[:, first:last + 1]


def _check_shape(shape: tuple[int, ...], source: str) -> None:
    if len(shape) != 2:
        raise InvalidTemplatesError(f"{source}: the basis is not a 2-D image (shape {tuple(shape)})")
    n_basis, n_pix = shape
    if not 1 <= n_basis <= MAX_BASIS_VECTORS or not PIXEL_RANGE[0] <= n_pix <= PIXEL_RANGE[1]:
        raise InvalidTemplatesError(
            f"{source}: a basis of {n_basis} vectors x {n_pix} pixels is outside "
            f"1-{MAX_BASIS_VECTORS} vectors x {PIXEL_RANGE[0]}-{PIXEL_RANGE[1]} pixels")


def check_basis(basis: Any, source: str) -> np.ndarray:
    """``basis`` as a float64 (n_basis, n_pix) array, refused unless it can be fitted.

    Raises
    ------
    InvalidTemplatesError
        Not 2-D, a size outside ``1..MAX_BASIS_VECTORS`` vectors or :data:`PIXEL_RANGE`
        pixels, a NaN or infinite value, or a rank below the number of vectors (an all-zero
        or repeated vector makes the fit's normal equations singular). ``source`` names the file.
    """
    if basis is None:
        raise InvalidTemplatesError(f"{source}: the file holds no basis image")
    _check_shape(np.shape(basis), source)
    basis = np.asarray(basis, dtype=np.float64)
    n_bad = int(np.count_nonzero(~np.isfinite(basis)))
    if n_bad:
        raise InvalidTemplatesError(f"{source}: {n_bad} of the basis's {basis.size} values are NaN or inf")
    n_basis = basis.shape[0]
    rank = int(np.linalg.matrix_rank(basis))
    if rank < n_basis:
        raise InvalidTemplatesError(f"{source}: the basis has rank {rank} for {n_basis} vectors (an all-zero "
                                    "or repeated vector): it cannot be fitted")
    return basis


def _check_axis(first: float, step: float, n_pix: int, log: bool, source: str) -> None:
    """Refuse a wavelength axis that does not strictly increase inside :data:`REST_WAVE_RANGE`."""
    if not (np.isfinite(first) and np.isfinite(step)):
        raise InvalidTemplatesError(f"{source}: wavelength axis start {first} / step {step} is not finite")
    if step <= 0:
        raise InvalidTemplatesError(f"{source}: wavelength step {step} <= 0: the axis must strictly increase")
    last = first + step * (n_pix - 1)
    with np.errstate(over="ignore"):
        lo, hi = (10.0 ** first, 10.0 ** last) if log else (first, last)
    if not (REST_WAVE_RANGE[0] <= lo and hi <= REST_WAVE_RANGE[1]):
        raise InvalidTemplatesError(f"{source}: wavelengths {lo:.4g}-{hi:.4g} A lie outside the rest-frame "
                                    f"range {REST_WAVE_RANGE[0]:g}-{REST_WAVE_RANGE[1]:g} A")


def _spectype(value: Any, source: str) -> str:
    spectype = str(value).strip().upper()
    if spectype not in SPECTYPES:
        raise InvalidTemplatesError(f"{source}: RRTYPE={value!r} is not one of {', '.join(SPECTYPES)}")
    return spectype


def _redrock_template(spectype: str, subtype: str, loglam0: float, dloglam: float, basis: np.ndarray,
                      archetypes: np.ndarray | None, source: str) -> TemplateBasis:
    """A Redrock basis on a log grid, with the line spread of its class (module docstring)."""
    sigma = SURVEY_GRADE_SIGMA_KMS if spectype == "QSO" or subtype == "CV" else 0.0
    intrinsic = QSO_INTRINSIC_SIGMA_KMS if spectype == "QSO" else 0.0
    name = f"redrock:{spectype}" + (f"-{subtype}" if subtype else "")
    return TemplateBasis(name=name, spectype=spectype, subtype=subtype, loglam0=loglam0, dloglam=dloglam,
                         basis=basis, archetypes=archetypes, sigma_kms=sigma, intrinsic_sigma_kms=intrinsic,
                         source=source)


def _read_redrock(path: Path) -> tuple[fits.Header, np.ndarray, np.ndarray | None]:
    """Header, checked basis and archetype rows of an ``rrtemplate`` file (sizes checked before reading)."""
    try:
        with fits.open(path, memmap=False) as hdul:
            hdr = hdul[0].header
            _check_shape(tuple(hdul[0].shape), str(path))  # from the header: nothing huge is read
            basis = check_basis(hdul[0].data, str(path))
            arche = (np.asarray(hdul["ARCHETYPE_COEFF"].data, dtype=np.float64)
                     if "ARCHETYPE_COEFF" in hdul else None)
    except (OSError, EOFError, zlib.error, TypeError, ValueError, IndexError) as err:
        if isinstance(err, InvalidTemplatesError):
            raise
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InvalidTemplatesError(f"{path}: not a readable Redrock template file ({first_line})") from err
    if arche is not None and (arche.ndim != 2 or arche.shape[1] != basis.shape[0]
                              or not np.all(np.isfinite(arche))):
        raise InvalidTemplatesError(f"{path}: ARCHETYPE_COEFF of shape {arche.shape} is not finite rows of "
                                    f"{basis.shape[0]} coefficients")
    return hdr, basis, arche


def load_redrock(path: str | os.PathLike, dloglam: float = FINE_DLOGLAM) -> TemplateBasis:
    """Read one Redrock ``rrtemplate`` file (see the module docstring), validated.

    Raises
    ------
    InvalidTemplatesError
        An unreadable file, missing ``RRTYPE``/``CRVAL1``/``CDELT1``, an ``RRTYPE`` that is not
        GALAXY/QSO/STAR, a wavelength axis that does not strictly increase (``CDELT1 <= 0``) or
        leaves :data:`REST_WAVE_RANGE`, or a basis :func:`check_basis` refuses.
    """
    path = Path(path)
    hdr, basis, arche = _read_redrock(path)
    missing = [key for key in ("RRTYPE", "CRVAL1", "CDELT1") if key not in hdr]
    if missing:
        raise InvalidTemplatesError(f"{path}: header keys {', '.join(missing)} are missing")
    spectype = _spectype(hdr["RRTYPE"], str(path))
    subtype = str(hdr.get("RRSUBTYP", "")).strip().upper()
    try:
        crval, cdelt = float(hdr["CRVAL1"]), float(hdr["CDELT1"])
    except (TypeError, ValueError) as err:
        raise InvalidTemplatesError(f"{path}: CRVAL1/CDELT1 are not numbers ({err})") from err
    log = bool(hdr.get("LOGLAM"))
    _check_axis(crval, cdelt, basis.shape[1], log, str(path))
    if log:
        loglam0, step = crval, cdelt
    else:
        loglam0, basis = _to_log_grid(crval + cdelt * np.arange(basis.shape[1]), basis, dloglam)
        step = dloglam
    return _redrock_template(spectype, subtype, loglam0, step, basis, arche, str(path))


def load_pyhammer(path: str | os.PathLike) -> TemplateBasis:
    """Read one PyHammer composite, resampled onto a uniform ``dloglam = 1e-4`` grid."""
    path = Path(path)
    stem = path.name.split(".fits")[0]
    m = _PYHAMMER_NAME.match(stem)
    if not m:
        raise OmniSpectraError(f"{path}: not a PyHammer composite name (<type>[_<FeH>_Dwarf])")
    with fits.open(path, memmap=False) as hdul:
        tab = hdul[1].data
        loglam = np.asarray(tab["LogLam"], dtype=np.float64)
        flux = np.asarray(tab["Flux"], dtype=np.float64)
    good = np.isfinite(loglam) & np.isfinite(flux)
    loglam, flux = loglam[good], flux[good]
    loglam0, basis = _to_log_grid(10 ** loglam, flux[None, :], 1e-4)
    feh = float(m["feh"]) if m["feh"] else float("nan")
    return TemplateBasis(name=f"pyhammer:{stem}", spectype="STAR", subtype=m["type"], loglam0=loglam0,
                         dloglam=1e-4, basis=basis, archetypes=np.ones((1, 1)),
                         sigma_kms=SURVEY_GRADE_SIGMA_KMS, fe_h=feh, source=str(path))


def _redrock_key(path: Path) -> str:
    """``galaxy``, ``QSO-LOZ-v1.1``, ...: the file name between ``rrtemplate-`` and ``.fits``."""
    return path.name[len("rrtemplate-"):].split(".fits")[0]


def _byte_planes(basis: np.ndarray) -> np.ndarray:
    """(4, n) uint8: byte k of every little-endian float32 value in row k (the "shuffle" of
    HDF5/Blosc): exponents and high mantissa bytes sit together, so deflate packs them ~20% tighter."""
    values = np.frombuffer(np.ascontiguousarray(basis, dtype="<f4").tobytes(), dtype=np.uint8)
    return np.ascontiguousarray(values.reshape(-1, 4).T)


def _from_byte_planes(planes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.ascontiguousarray(planes.T).view("<f4").reshape(shape)


def write_compact(library: TemplateLibrary, path: str | os.PathLike,
                  info: dict[str, Any] | None = None) -> None:
    """Store the Redrock bases of ``library`` in one compact ``.npz`` file (atomic, reproducible).

    Each basis is kept as loaded (uniform log10 grid), in float32; archetype rows are left
    out (the fitter does not use them). The members are a JSON ``header`` (format, version,
    one entry per template with its key, class, grid and shape, and ``info``) and one
    ``basis_NN`` array per template: the float32 values as four byte planes (see
    :func:`load_compact`), deflated, with a fixed time stamp so that the same library and
    ``info`` always give the same bytes.

    Parameters
    ----------
    library : TemplateLibrary
        Its ``redrock:`` templates are stored (a basis :func:`check_basis` refuses is an error).
    path : path-like
        Output file (``.npz``).
    info : dict, optional
        JSON-serializable provenance (release, source files and their sha256), returned as
        ``TemplateLibrary.info`` by :func:`load_compact`.
    """
    templates = [t for t in library.templates if t.name.startswith("redrock:")]
    entries, arrays = [], {}
    for k, t in enumerate(templates):
        basis = check_basis(t.basis, t.name)
        arrays[f"basis_{k:02d}"] = _byte_planes(basis)
        from_file = Path(t.source).name.startswith("rrtemplate-")
        key = _redrock_key(Path(t.source)) if from_file else t.name.removeprefix("redrock:")
        entries.append({"key": key, "spectype": t.spectype, "subtype": t.subtype, "loglam0": float(t.loglam0),
                        "dloglam": float(t.dloglam), "shape": list(basis.shape)})
    header = {"format": COMPACT_FORMAT, "format_version": COMPACT_FORMAT_VERSION, "templates": entries,
              "info": info or {}}
    arrays["header"] = np.array(json.dumps(header, sort_keys=True))
    with atomic_write(path) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME), buffer.getvalue(),
                        compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)


def _compact_header(npz: Any, path: Path) -> dict[str, Any]:
    if "header" not in npz.files:
        raise InvalidTemplatesError(f"{path}: not a compact template file (no header)")
    try:
        header = json.loads(str(npz["header"][()]))
    except (ValueError, TypeError) as err:
        raise InvalidTemplatesError(f"{path}: the compact template header is not JSON ({err})") from err
    if not isinstance(header, dict) or header.get("format") != COMPACT_FORMAT:
        raise InvalidTemplatesError(f"{path}: not a compact template file (format {COMPACT_FORMAT!r})")
    if header.get("format_version") != COMPACT_FORMAT_VERSION:
        raise InvalidTemplatesError(f"{path}: compact format version {header.get('format_version')!r}; "
                                    f"this omnispectra reads version {COMPACT_FORMAT_VERSION}")
    if not isinstance(header.get("templates"), list) or not isinstance(header.get("info", {}), dict):
        raise InvalidTemplatesError(f"{path}: the compact template header has no list of templates")
    return header


def _compact_template(npz: Any, k: int, entry: Any, path: Path) -> TemplateBasis:
    where = f"{path} template {k}"
    member = f"basis_{k:02d}"
    try:
        key, spectype, subtype = str(entry["key"]), entry["spectype"], str(entry["subtype"])
        loglam0, dloglam = float(entry["loglam0"]), float(entry["dloglam"])
        shape = tuple(int(n) for n in entry["shape"])
    except (KeyError, TypeError, ValueError) as err:
        raise InvalidTemplatesError(f"{where}: a header entry is missing or malformed ({err!r})") from err
    where = f"{path} template {key}"
    _check_shape(shape, where)  # before anything is unpacked
    if member not in npz.files:
        raise InvalidTemplatesError(f"{where}: the array {member} is missing")
    planes = npz[member]
    if planes.dtype != np.uint8 or planes.shape != (4, shape[0] * shape[1]):
        raise InvalidTemplatesError(f"{where}: {member} ({planes.dtype} {planes.shape}) is not the float32 "
                                    f"byte planes of a {shape[0]} x {shape[1]} basis")
    basis = check_basis(_from_byte_planes(planes, shape), where)
    _check_axis(loglam0, dloglam, basis.shape[1], True, where)
    return _redrock_template(_spectype(spectype, where), subtype, loglam0, dloglam, basis, None, str(path))


def load_compact(path: str | os.PathLike, keys: list[str] | None = None) -> TemplateLibrary:
    """Read a file of :func:`write_compact`, validated, without unpickling anything.

    Parameters
    ----------
    path : path-like
        The ``.npz`` file.
    keys : list of str, optional
        Only these templates (the Redrock file keys, e.g. ``"galaxy"``, ``"STAR-K-v0.1"``).

    Raises
    ------
    InvalidTemplatesError
        Not a readable compact file, a wrong format or version, a malformed entry, a
        missing array, or a basis :func:`check_basis` or the wavelength check refuses.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            header = _compact_header(npz, path)
            templates = [_compact_template(npz, k, entry, path) for k, entry in enumerate(header["templates"])
                         if keys is None or (isinstance(entry, dict) and entry.get("key") in keys)]
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, ValueError) as err:
        if isinstance(err, InvalidTemplatesError):
            raise
        raise InvalidTemplatesError(f"{path}: not a readable compact template file ({err})") from err
    if not templates:
        raise InvalidTemplatesError(f"{path}: the compact file holds none of the templates asked for")
    return TemplateLibrary(templates, info=dict(header.get("info", {})))


def load_library(directory: str | os.PathLike | None = None, *, redrock: list[str] | None = None,
                 pyhammer: list[str] | bool = True) -> TemplateLibrary:
    """Load the templates of ``directory`` (``redrock/`` and ``pyhammer/`` subfolders), validated.

    Parameters
    ----------
    directory : path-like, optional
        A template folder, or a compact ``.npz`` file of :func:`write_compact` (Redrock
        bases only); default ``$OMNISPECTRA_TEMPLATES``.
    redrock : list of str, optional
        Which Redrock files, by the name after ``rrtemplate-`` (``"galaxy"``,
        ``"STAR-K-v0.1"``, ``"QSO-LOZ-v1.1"`` ...); default all except ``QSO-None``
        (the older BOSS basis the LOZ/HIZ pair replaces).
    pyhammer : bool or list of str
        All composites (True), none (False), or these file stems (``"M2_+0.0_Dwarf"``).

    Raises
    ------
    TemplatesNotFoundError
        No folder given or found (:func:`templates_directory`).
    InvalidTemplatesError
        A template file is unreadable or degenerate (:func:`load_redrock`, :func:`load_compact`).
    """
    root = templates_directory(directory)
    if root.is_file():
        return load_compact(root, keys=redrock)
    lib = TemplateLibrary()
    for f in sorted((root / "redrock").glob("rrtemplate-*.fits*")):
        key = _redrock_key(f)
        if redrock is None and key.startswith("QSO-None"):
            continue
        if redrock is not None and key not in redrock:
            continue
        lib.templates.append(load_redrock(f))
    if pyhammer:
        for f in sorted((root / "pyhammer").glob("*.fits*")):
            stem = f.name.split(".fits")[0]
            if pyhammer is True or stem in pyhammer:
                lib.templates.append(load_pyhammer(f))
    if not lib.templates:
        raise OmniSpectraError(f"no templates found under {root}")
    logger.info("loaded %d templates from %s", len(lib), root)
    return lib
