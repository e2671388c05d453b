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

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..exceptions import OmniSpectraError
from .resample import C_KMS, rebin

__all__ = [
    "FINE_DLOGLAM",
    "SURVEY_GRADE_SIGMA_KMS",
    "QSO_INTRINSIC_SIGMA_KMS",
    "TemplateBasis",
    "TemplateLibrary",
    "load_redrock",
    "load_pyhammer",
    "load_library",
    "templates_directory",
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
    """The template folder: ``directory``, else ``$OMNISPECTRA_TEMPLATES``."""
    path = directory or os.environ.get("OMNISPECTRA_TEMPLATES")
    if not path:
        raise OmniSpectraError("no template directory: pass one or set OMNISPECTRA_TEMPLATES "
                               "(a folder with redrock/ and/or pyhammer/ subfolders)")
    path = Path(path)
    if not path.is_dir():
        raise OmniSpectraError(f"template directory {path} does not exist")
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


def load_redrock(path: str | os.PathLike, dloglam: float = FINE_DLOGLAM) -> TemplateBasis:
    """Read one Redrock ``rrtemplate`` file (see the module docstring)."""
    path = Path(path)
    with fits.open(path, memmap=False) as hdul:
        hdr = hdul[0].header
        basis = np.asarray(hdul[0].data, dtype=np.float64)
        arche = (np.asarray(hdul["ARCHETYPE_COEFF"].data, dtype=np.float64)
                 if "ARCHETYPE_COEFF" in hdul else None)
    if basis.ndim != 2:
        raise OmniSpectraError(f"{path}: BASIS_VECTORS is not 2-D")
    spectype = str(hdr.get("RRTYPE", "")).strip().upper()
    subtype = str(hdr.get("RRSUBTYP", "")).strip().upper()
    crval, cdelt = float(hdr["CRVAL1"]), float(hdr["CDELT1"])
    idx = np.arange(basis.shape[1])
    if hdr.get("LOGLAM"):
        loglam0, step = crval, cdelt
    else:
        loglam0, basis = _to_log_grid(crval + cdelt * idx, basis, dloglam)
        step = dloglam
    sigma = SURVEY_GRADE_SIGMA_KMS if spectype == "QSO" or subtype == "CV" else 0.0
    intrinsic = QSO_INTRINSIC_SIGMA_KMS if spectype == "QSO" else 0.0
    name = f"redrock:{spectype}" + (f"-{subtype}" if subtype else "")
    return TemplateBasis(name=name, spectype=spectype, subtype=subtype, loglam0=loglam0, dloglam=step,
                         basis=basis, archetypes=arche, sigma_kms=sigma, intrinsic_sigma_kms=intrinsic,
                         source=str(path))


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


def load_library(directory: str | os.PathLike | None = None, *, redrock: list[str] | None = None,
                 pyhammer: list[str] | bool = True) -> TemplateLibrary:
    """Load the templates of ``directory`` (``redrock/`` and ``pyhammer/`` subfolders).

    Parameters
    ----------
    redrock : list of str, optional
        Which Redrock files, by the name after ``rrtemplate-`` (``"galaxy"``,
        ``"STAR-K-v0.1"``, ``"QSO-LOZ-v1.1"`` ...); default all except ``QSO-None``
        (the older BOSS basis the LOZ/HIZ pair replaces).
    pyhammer : bool or list of str
        All composites (True), none (False), or these file stems (``"M2_+0.0_Dwarf"``).
    """
    root = templates_directory(directory)
    lib = TemplateLibrary()
    for f in sorted((root / "redrock").glob("rrtemplate-*.fits*")):
        key = f.name[len("rrtemplate-"):].split(".fits")[0]
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
