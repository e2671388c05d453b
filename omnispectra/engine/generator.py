"""The engine: labelled, survey-realistic spectra drawn from templates and real donors.

:meth:`Engine.sample` draws, from one ``numpy`` generator (so a sample is a pure function
of its seed):

1. a class from :attr:`EngineConfig.class_priors`;
2. a noise donor (a training-side real spectrum, :mod:`omnispectra.engine.donors`);
3. a template of that class that covers the donor's grid at an allowed redshift and
   whose line spread is not wider than the donor's; stars by the explicit subtype
   priors of :attr:`EngineConfig.star_priors` (uniform archetype rows would make 64%
   of stars white dwarfs: 20,000 of the 31,177 rows);
4. coefficients: a Redrock ``ARCHETYPE_COEFF`` row with small multiplicative
   perturbations (galaxies, stars); for the QSO LOZ/HIZ and CV bases, which have no rows,
   a Gaussian fitted to the coefficients of real training-side quasars
   (:meth:`Engine.fit_quasars`), else a documented fallback; draws with negative flux
   (above the Lyman limit) are rejected;
5. a redshift: galaxies in [0, 1.5] (60% below 0.4), quasars in [0, 4] (uniform), stars
   a radial velocity uniform in +-300 km/s, always inside the window where the
   template covers the donor grid (:func:`~omnispectra.engine.observe.redshift_window`);
6. the Lyman-alpha forest for quasars (:mod:`omnispectra.engine.igm`);
7. observation through the donor (:func:`~omnispectra.engine.observe.observe`).

Labels: ``class`` (GALAXY/QSO/STAR), ``subclass`` (stars: Redrock subtype A ... WD, CV,
or the composite's spectral type such as ``M2``; empty for galaxies and quasars) and
``z`` (stars: v/c). No Teff, logg or [Fe/H] label is ever produced.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..exceptions import OmniSpectraError
from .donors import Donor
from .igm import LYMAN_LIMIT, forest_transmission
from .observe import ObserveConfig, observe, redshift_window
from .resample import C_KMS, rebin
from .templates import TemplateBasis, TemplateLibrary

__all__ = ["EngineConfig", "EngineSample", "Engine", "fit_basis", "CLASSES"]

logger = logging.getLogger(__name__)

CLASSES = ("GALAXY", "QSO", "STAR")
#: Native redshift ranges of the QSO bases (their REDSHIFTS HDUs: LOZ 0.05-1.6, HIZ 1.4-7).
QSO_BASIS_Z = {"LOZ": (0.0, 1.6), "HIZ": (1.4, 7.0)}
_PYHAMMER = "pyhammer"
#: A template may go onto a grid on which its sharpest features would be up to this
#: factor narrower than in the template (R ~ 2000 is approximate, and SDSS wdisp varies
#: by ~10% across fibres; :meth:`TemplateBasis.line_width_ratio`). PyHammer stars on
#: sharper grids (DESI, LAMOST MRS, X-shooter, LEGA-C) are refused; quasars, whose lines
#: are intrinsically broad, are not.
SIGMA_TOLERANCE = 1.25


@dataclass
class EngineConfig:
    """Priors and physics of :class:`Engine` (all explicit; see the module docstring)."""

    class_priors: dict[str, float] = field(
        default_factory=lambda: {"GALAXY": 1 / 3, "QSO": 1 / 3, "STAR": 1 / 3})
    #: Star sources: Redrock subtypes by name, and all PyHammer composites together.
    star_priors: dict[str, float] = field(default_factory=lambda: {
        "A": 0.10, "B": 0.06, "F": 0.14, "G": 0.12, "K": 0.14, "M": 0.14, "WD": 0.06, "CV": 0.02,
        _PYHAMMER: 0.22})
    galaxy_z: tuple[float, float] = (0.0, 1.5)
    galaxy_low_z_fraction: float = 0.6
    galaxy_low_z_max: float = 0.4
    qso_z: tuple[float, float] = (0.0, 4.0)
    star_rv_kms: float = 300.0
    archetype_perturbation: float = 0.05
    forest_sigma_g: float = 1.4
    forest_corr_kms: float = 60.0
    max_tries: int = 50
    observe: ObserveConfig = field(default_factory=ObserveConfig)
    #: Surveys whose spectra are not flux-calibrated (6dFGS: counts with the instrument
    #: response): their engine spectra get a stronger, higher-order tilt.
    uncalibrated_surveys: tuple[str, ...] = ("6dfgs",)
    uncalibrated_tilt: tuple[int, float] = (3, 0.35)


@dataclass
class EngineSample:
    """One engine spectrum with its labels."""

    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray
    labels: dict[str, Any]
    meta: dict[str, Any]


def fit_basis(template: TemplateBasis, wave: np.ndarray, flux: np.ndarray, ivar: np.ndarray,
              mask: np.ndarray, z: float, min_pixels: int = 200) -> np.ndarray | None:
    """Weighted least-squares coefficients of ``template`` for a real spectrum at ``z``,
    normalised so the model's median over the template is 1; None when the fit is
    impossible (too few covered pixels, non-positive model). Rest wavelengths below
    Lyman-alpha are left out (the forest is added separately)."""
    rest_lo = max(template.rest_range[0], 1216.0 * 1.01)
    obs_wave = 10 ** template.loglam * (1.0 + z)
    model = rebin(obs_wave, template.basis, wave)  # (n_b, n)
    use = (np.all(np.isfinite(model), axis=0) & (ivar > 0) & ~mask & np.isfinite(flux)
           & (wave / (1.0 + z) > rest_lo))
    if use.sum() < min_pixels:
        return None
    w = np.sqrt(ivar[use])
    coeff, *_ = np.linalg.lstsq((model[:, use] * w).T, flux[use] * w, rcond=None)
    norm = float(np.median(template.flux(coeff)))
    if not np.isfinite(norm) or norm <= 0:
        return None
    return coeff / norm


class Engine:
    """Draws :class:`EngineSample` objects from templates observed through donors.

    Parameters
    ----------
    library : TemplateLibrary
    donors : list of Donor
        Training-side real spectra (see :func:`omnispectra.engine.donors.select_side`).
    config : EngineConfig, optional
    """

    def __init__(self, library: TemplateLibrary, donors: list[Donor],
                 config: EngineConfig | None = None) -> None:
        if not donors:
            raise OmniSpectraError("the engine needs at least one noise donor")
        self.library = library
        self.donors = list(donors)
        self.config = config or EngineConfig()
        #: template name -> (mean, cov, rows) of fitted normalised coefficients
        self.coefficient_models: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._windows: dict[tuple[str, int], tuple[float, float]] = {}

    # ------------------------------------------------------------ coefficients
    def fit_quasars(self, quasars: list[Donor], min_fits: int = 3) -> dict[str, int]:
        """Fit the QSO bases to real quasars (training side!) and keep a Gaussian of the
        normalised coefficients per basis. Returns the number of fits per basis."""
        counts = {}
        for t in self.library.by_class("QSO"):
            zlo, zhi = QSO_BASIS_Z.get(t.subtype, (0.0, 7.0))
            rows = []
            for q in quasars:
                z = q.labels.get("z")
                if z is None or not zlo <= float(z) <= zhi:
                    continue
                c = fit_basis(t, q.wave, q.flux, q.ivar, q.mask, float(z))
                if c is not None and np.all(np.isfinite(c)):
                    rows.append(c)
            counts[t.name] = len(rows)
            if len(rows) >= min_fits:
                rows = np.array(rows)
                # robust: drop fits more than 5 MAD from the median in any coefficient
                med = np.median(rows, axis=0)
                mad = np.median(np.abs(rows - med), axis=0) + 1e-9
                rows = rows[np.all(np.abs(rows - med) < 5 * 1.4826 * mad, axis=1)] if len(rows) > 5 else rows
                cov = np.cov(rows.T) if len(rows) > 1 else np.zeros((rows.shape[1],) * 2)
                cov = cov + 0.05 * np.diag(np.diag(cov)) + 1e-6 * np.eye(rows.shape[1])
                self.coefficient_models[t.name] = (rows.mean(axis=0), cov, rows)
        logger.info("QSO basis fits: %s", counts)
        return counts

    def _positive(self, template: TemplateBasis, flux: np.ndarray) -> bool:
        rest = 10 ** template.loglam
        use = rest > LYMAN_LIMIT
        return bool(np.min(flux[use]) >= -1e-3 * abs(float(np.median(flux[use]))))

    def draw_rest_flux(self, template: TemplateBasis, rng: np.random.Generator) -> np.ndarray:
        """Rest-frame flux of one random member of ``template`` (see the module docstring)."""
        if template.archetypes is not None:
            row = template.archetypes[rng.integers(len(template.archetypes))]
            for _ in range(10):
                c = row * (1.0 + self.config.archetype_perturbation * rng.standard_normal(row.size))
                f = template.flux(c)
                if self._positive(template, f):
                    return f
            return template.flux(row)
        if template.name in self.coefficient_models:
            mean, cov, rows = self.coefficient_models[template.name]
            for _ in range(self.config.max_tries):
                f = template.flux(rng.multivariate_normal(mean, cov))
                if self._positive(template, f):
                    return f
            return template.flux(rows[rng.integers(len(rows))])
        # fallback (no fits): the first vector plus small multiples of the others
        scale = (np.linalg.norm(template.basis[0])
                 / np.maximum(np.linalg.norm(template.basis[1:], axis=1), 1e-30))
        for _ in range(self.config.max_tries):
            c = np.concatenate([[1.0], 0.1 * scale * rng.standard_normal(template.basis.shape[0] - 1)])
            f = template.flux(c)
            if self._positive(template, f):
                return f
        return template.flux(np.eye(template.basis.shape[0])[0])

    # ------------------------------------------------------------ choices
    def _window(self, template: TemplateBasis, donor_index: int) -> tuple[float, float]:
        key = (template.name, donor_index)
        if key not in self._windows:
            self._windows[key] = redshift_window(template, self.donors[donor_index].wave)
        return self._windows[key]

    def _class_range(self, template: TemplateBasis) -> tuple[float, float]:
        cfg = self.config
        if template.spectype == "GALAXY":
            return cfg.galaxy_z
        if template.spectype == "QSO":
            lo, hi = QSO_BASIS_Z.get(template.subtype, (0.0, 7.0))
            return max(lo, cfg.qso_z[0]), min(hi, cfg.qso_z[1])
        v = cfg.star_rv_kms / C_KMS
        return -v, v

    def candidates(self, spectype: str, donor_index: int) -> list[tuple[TemplateBasis, float, float]]:
        """Templates of ``spectype`` usable on donor ``donor_index``, with their z interval."""
        donor = self.donors[donor_index]
        out = []
        for t in self.library.by_class(spectype):
            if t.line_width_ratio(donor.median_sigma_kms) > SIGMA_TOLERANCE:  # broaden only downward
                continue
            lo, hi = self._window(t, donor_index)
            clo, chi = self._class_range(t)
            lo, hi = max(lo, clo), min(hi, chi)
            if lo < hi:
                out.append((t, lo, hi))
        return out

    def _star_group(self, t: TemplateBasis) -> str:
        return _PYHAMMER if t.name.startswith(_PYHAMMER) else t.subtype

    def _choose(self, spectype: str, cands, rng: np.random.Generator):
        cfg = self.config
        if spectype == "STAR":
            groups: dict[str, list] = {}
            for c in cands:
                groups.setdefault(self._star_group(c[0]), []).append(c)
            names = [g for g in groups if cfg.star_priors.get(g, 0) > 0]
            if not names:
                return None
            p = np.array([cfg.star_priors[g] for g in names])
            group = groups[names[rng.choice(len(names), p=p / p.sum())]]
            t, lo, hi = group[rng.integers(len(group))]
            return t, float(rng.uniform(lo, hi))
        if spectype == "QSO":
            # z uniform over the union of the bases' windows, then a basis containing it
            spans = np.array([hi - lo for _, lo, hi in cands])
            k = rng.choice(len(cands), p=spans / spans.sum())
            z = float(rng.uniform(cands[k][1], cands[k][2]))
            holding = [c for c in cands if c[1] <= z <= c[2]]
            return holding[rng.integers(len(holding))][0], z
        t, lo, hi = cands[rng.integers(len(cands))]
        cut = min(max(cfg.galaxy_low_z_max, lo), hi)
        if rng.random() < cfg.galaxy_low_z_fraction and cut > lo:
            return t, float(rng.uniform(lo, cut))
        return t, float(rng.uniform(cut if cut < hi else lo, hi))

    # ------------------------------------------------------------ sampling
    def sample(self, rng: np.random.Generator, spectype: str | None = None,
               donor_index: int | None = None) -> EngineSample:
        """One engine spectrum (see the module docstring).

        Raises
        ------
        OmniSpectraError
            No template of the class covers any tried donor grid.
        """
        cfg = self.config
        classes = [c for c in CLASSES if cfg.class_priors.get(c, 0) > 0 and self.library.by_class(c)]
        if not classes:
            raise OmniSpectraError("the template library has no class with a positive prior")
        p = np.array([cfg.class_priors[c] for c in classes])
        for _ in range(cfg.max_tries):
            cls = spectype or classes[rng.choice(len(classes), p=p / p.sum())]
            di = int(rng.integers(len(self.donors))) if donor_index is None else int(donor_index)
            cands = self.candidates(cls, di)
            choice = self._choose(cls, cands, rng) if cands else None
            if choice is None:
                continue
            template, z = choice
            donor = self.donors[di]
            rest = self.draw_rest_flux(template, rng)
            transmission = None
            if cls == "QSO":
                rest = np.where(10 ** template.loglam < LYMAN_LIMIT, np.clip(rest, 0.0, None), rest)
                transmission = functools.partial(forest_transmission, z_qso=z, rng=rng,
                                                 sigma_g=cfg.forest_sigma_g, corr_kms=cfg.forest_corr_kms)
            obs_cfg = cfg.observe
            if donor.survey in cfg.uncalibrated_surveys:
                obs_cfg = replace(obs_cfg, tilt_order=cfg.uncalibrated_tilt[0],
                                  tilt_sigma=cfg.uncalibrated_tilt[1])
            flux, ivar, mask, _ = observe(template, rest, z, donor, rng, obs_cfg, transmission)
            sub = template.subtype if cls == "STAR" else ""
            labels = {"class": cls, "subclass": sub, "z": z}
            meta = {"survey": donor.survey, "template": template.name, "donor_id": donor.id,
                    "fe_h_bin": template.fe_h}
            return EngineSample(donor.wave.copy(), flux, ivar, mask, labels, meta)
        raise OmniSpectraError(f"no {spectype or 'template'} covers the tried donor grids "
                               f"(after {cfg.max_tries} tries)")
