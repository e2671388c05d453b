"""Labelled library stars observed through real survey donors (stellar-parameter training).

A library star (a MILES spectrum with Teff, logg, [Fe/H]) is observed the way a survey
would see it, with the engine's one observation routine
(:func:`~omnispectra.engine.observe.observe`):

1. a radial velocity uniform in ``+-rv_kms``;
2. the donor is cut to its pixels inside the star's (shifted) wavelength range
   (:func:`clip_donor`): the engine spectrum has the donor's coverage *within* the
   library's range, never beyond it, so a SDSS grid gives 3,800-7,400 A;
3. the star is degraded to the donor's line spread where that is coarser than the
   library's (:func:`degrade_fwhm`: a Gaussian of FWHM ``sqrt(fwhm_donor^2 - fwhm_lib^2)``
   per pixel, in Angstrom; MILES is 2.5 A FWHM at every wavelength, a R = 2000 grid is
   coarser above 5,000 A and sharper below). Where the donor is sharper, the star keeps
   the library's resolution;
4. noise, mask, signal-to-noise, flux-calibration tilt and, for uncalibrated surveys,
   the instrument response, as for every engine spectrum
   (:meth:`~omnispectra.engine.generator.Engine.observation_settings`).

Labels: ``class`` STAR, ``teff``, ``logg``, ``fe_h`` (NaN: unknown), ``z`` (v/c); the
meta holds the library star's id as ``object_id``, so every split groups by star.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..exceptions import InvalidSpectrumError
from ..templates.library import TemplateBasis
from ..templates.resample import C_KMS, rebin
from .donors import Donor
from .observe import EDGE_MARGIN, CoverageError, ObserveConfig, observe

__all__ = ["LibraryStar", "clip_donor", "degrade_fwhm", "observe_star", "miles_stars", "MIN_STAR_PIXELS",
           "MILES_FWHM"]

_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))
#: MILES' line spread, FWHM in Angstrom, at every wavelength.
MILES_FWHM = 2.5
#: MILES stars never observed as library stars: s0505 is the X-shooter validation star.
_MILES_SKIPPED = ("s0505",)
#: An engine star needs at least this many valid donor pixels inside the library's range.
MIN_STAR_PIXELS = 200
#: Step (log10) of the grid the degraded star is put on before it is observed (~4.6 km/s).
_DLOGLAM = 2e-5


@dataclass
class LibraryStar:
    """One labelled library spectrum (rest frame, Angstrom).

    Attributes
    ----------
    id : str
        The star's id (MILES ``s0001``): the group of every engine spectrum made from it.
    wave, flux : arrays
        Increasing wavelengths and the flux there (any units).
    fwhm : float
        The library's line spread, FWHM in Angstrom (MILES: 2.5).
    labels : dict
        ``teff`` (K), ``logg``, ``fe_h`` (dex); NaN where unknown.
    """

    id: str
    wave: np.ndarray
    flux: np.ndarray
    fwhm: float
    labels: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.wave = np.asarray(self.wave, dtype=np.float64)
        self.flux = np.asarray(self.flux, dtype=np.float64)
        if self.wave.ndim != 1 or self.wave.shape != self.flux.shape or self.wave.size < 10:
            raise InvalidSpectrumError(f"library star {self.id}: wave {self.wave.shape} and flux "
                                       f"{self.flux.shape} must be 1-D, of one length, at least 10 pixels")
        if np.any(np.diff(self.wave) <= 0) or not np.all(np.isfinite(self.flux)):
            raise InvalidSpectrumError(f"library star {self.id}: wavelengths must increase and fluxes "
                                       "be finite")
        if not self.fwhm > 0:
            raise InvalidSpectrumError(f"library star {self.id}: fwhm must be > 0 Angstrom, got {self.fwhm}")


def miles_stars(root: str | os.PathLike) -> list[LibraryStar]:
    """The labelled MILES stars of a data folder (``<root>/miles/index.csv`` and its files).

    Labels ``teff``, ``logg`` and ``fe_h`` from the index (``fe_h`` NaN where the index has
    none); stars without a finite Teff and logg, or with placeholder values, are left out,
    as is s0505 (the X-shooter validation star).

    Raises
    ------
    FileNotFoundError
        ``<root>/miles/index.csv`` does not exist.
    """
    import csv

    from .. import io
    from ..tokenizer import spectrum_arrays

    root = Path(root)
    stars = []
    with open(root / "miles" / "index.csv") as fh:
        for r in csv.DictReader(fh):
            teff, logg, feh = (float(r[k] or "nan") for k in ("Teff", "logg", "FeH"))
            if r["miles_id"] in _MILES_SKIPPED or not (np.isfinite(teff) and np.isfinite(logg)) \
                    or teff > 9e4 or logg > 999:
                continue
            spec = io.read(root / r["file"])
            wave, flux, _, _ = spectrum_arrays(spec[0] if isinstance(spec, list) else spec)
            stars.append(LibraryStar(r["miles_id"], wave, np.nan_to_num(flux), MILES_FWHM,
                                     {"teff": teff, "logg": logg, "fe_h": feh if abs(feh) < 99 else np.nan}))
    return stars


def clip_donor(donor: Donor, lo: float, hi: float) -> Donor:
    """The donor's pixels with ``lo <= wave <= hi`` (Angstrom, observed)."""
    keep = (donor.wave >= lo) & (donor.wave <= hi)
    sky = donor.sky[keep] if donor.sky is not None else None
    return replace(donor, wave=donor.wave[keep], flux=donor.flux[keep], ivar=donor.ivar[keep],
                   mask=donor.mask[keep], sigma_kms=donor.sigma_kms[keep], sky=sky)


def degrade_fwhm(wave: np.ndarray, flux: np.ndarray, fwhm: float, target_fwhm: np.ndarray) -> np.ndarray:
    """Convolve ``flux`` (FWHM ``fwhm`` A) to the FWHM ``target_fwhm`` (A, per pixel of ``wave``).

    A Gaussian of sigma ``sqrt(target^2 - fwhm^2) / 2.355`` at each pixel (0 where the target
    is sharper), normalised over the pixels it reaches, so the edges keep their level.
    """
    wave = np.asarray(wave, dtype=np.float64)
    extra = np.sqrt(np.clip(np.asarray(target_fwhm, dtype=np.float64) ** 2 - fwhm ** 2, 0.0, None)) / _FWHM
    step = np.gradient(wave)
    sig_pix = extra / step
    if not np.any(sig_pix > 0.05):
        return np.asarray(flux, dtype=np.float64).copy()
    half = int(np.ceil(4.0 * sig_pix.max()))
    offsets = np.arange(-half, half + 1)
    idx = np.arange(wave.size)[:, None] + offsets[None, :]
    inside = (idx >= 0) & (idx < wave.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.exp(-0.5 * (offsets[None, :] / np.maximum(sig_pix, 1e-6)[:, None]) ** 2)
    w = np.where(inside, w, 0.0)
    w /= w.sum(axis=1, keepdims=True)
    return np.sum(w * np.asarray(flux, dtype=np.float64)[np.clip(idx, 0, wave.size - 1)], axis=1)


def _star_template(star: LibraryStar, flux: np.ndarray, sigma_kms: float) -> TemplateBasis:
    """The degraded star on a uniform log grid, declared at the donor's line spread (so
    :func:`observe` broadens it no further)."""
    lo, hi = np.log10(star.wave[0]), np.log10(star.wave[-1])
    loglam = np.arange(lo, hi, _DLOGLAM)
    fine = rebin(star.wave, flux, 10 ** loglam)
    ok = np.isfinite(fine)
    first, last = np.flatnonzero(ok)[[0, -1]]
    return TemplateBasis(name=f"library:{star.id}", spectype="STAR", subtype="", loglam0=float(loglam[first]),
                         dloglam=_DLOGLAM, basis=fine[first:last + 1][None, :], sigma_kms=float(sigma_kms))


def observe_star(star: LibraryStar, donor: Donor, rng: np.random.Generator,
                 config: ObserveConfig | None = None, response: np.ndarray | None = None,
                 rv_kms: float = 300.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """Observe a library star through ``donor`` (see the module docstring).

    Parameters
    ----------
    response : array on ``donor.wave``, optional
        Instrument response of an uncalibrated survey (cut with the donor).

    Returns
    -------
    wave, flux, ivar, mask : arrays on the donor's pixels inside the star's range
    labels : dict
        ``class``, ``teff``, ``logg``, ``fe_h``, ``z``.

    Raises
    ------
    CoverageError
        Fewer than :data:`MIN_STAR_PIXELS` valid donor pixels lie inside the star's range.
    """
    z = float(rng.uniform(-rv_kms, rv_kms)) / C_KMS
    lo, hi = star.wave[0] * (1.0 + z) * EDGE_MARGIN, star.wave[-1] * (1.0 + z) / EDGE_MARGIN
    keep = (donor.wave >= lo) & (donor.wave <= hi)
    part = clip_donor(donor, lo, hi)
    if part.valid.sum() < MIN_STAR_PIXELS:
        raise CoverageError(f"donor {donor.id} has {int(part.valid.sum())} valid pixels inside "
                            f"{lo:.0f}-{hi:.0f} A (library star {star.id}); "
                            f"at least {MIN_STAR_PIXELS} needed")
    # the donor's FWHM (A) in the star's rest frame, at each library pixel
    donor_fwhm = _FWHM * part.sigma_kms / C_KMS * part.wave / (1.0 + z)
    target = np.interp(star.wave, part.wave / (1.0 + z), donor_fwhm)
    flux = degrade_fwhm(star.wave, star.flux, star.fwhm, target)
    template = _star_template(star, flux, part.median_sigma_kms)
    resp = response[keep] if response is not None else None
    obs, ivar, mask, _ = observe(template, template.basis[0], z, part, rng, config, None, resp)
    labels = {"class": "STAR", **{k: float(star.labels.get(k, np.nan)) for k in ("teff", "logg", "fe_h")},
              "z": z}
    return part.wave.copy(), obs, ivar, mask, labels
