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
5. a redshift: galaxies in [0, 1.5] (60% below 0.4; on the grids of a survey with
   labelled training-side galaxies, half from that survey's own redshifts,
   :meth:`Engine.fit_redshift_priors`), quasars in [0, 4] (uniform), stars
   a radial velocity uniform in +-300 km/s, always inside the window where the
   template covers the donor grid (:func:`~omnispectra.engine.observe.redshift_window`);
6. the Lyman-alpha forest for quasars (:mod:`omnispectra.templates.igm`);
7. observation through the donor (:func:`~omnispectra.engine.observe.observe`), for
   surveys without flux calibration (6dFGS) through the instrument response estimated
   from training-side donors (:meth:`Engine.fit_responses`).

Labels: ``class`` (GALAXY/QSO/STAR), ``subclass`` (stars: Redrock subtype A ... WD, CV,
or the composite's spectral type such as ``M2``; empty for galaxies and quasars) and
``z`` (stars: v/c). A PyHammer composite star also carries ``teff``, its spectral type's
Teff on the dwarf scale (:func:`omnispectra.templates.spectral_types.type_teff`); Redrock
template stars carry no Teff, and no template logg or [Fe/H] (the composites' [Fe/H] is a
0.5-dex bin). Labelled library stars carry all three (:meth:`Engine.sample_star`,
:mod:`omnispectra.engine.labelled`).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.ndimage import median_filter

from ..exceptions import OmniSpectraError
from ..flags import CLASSES
from ..templates.igm import LYMAN_LIMIT, forest_transmission
from ..templates.library import TemplateBasis, TemplateLibrary
from ..templates.resample import C_KMS, rebin
from ..templates.spectral_types import type_teff
from .donors import Donor
from .labelled import LibraryStar, observe_star
from .observe import CoverageError, ObserveConfig, observe, redshift_window

__all__ = ["EngineConfig", "EngineSample", "Engine", "SurveyResponse", "fit_basis", "CLASSES"]

logger = logging.getLogger(__name__)

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
    #: Fraction of the galaxies on a survey's grids whose redshift is drawn from that
    #: survey's own redshift distribution (training-side labels,
    #: :meth:`Engine.fit_redshift_priors`), jittered by ``survey_z_jitter`` in ln(1+z);
    #: the rest keep the broad prior above, so every grid still sees every redshift.
    survey_z_fraction: float = 0.5
    survey_z_jitter: float = 0.02
    qso_z: tuple[float, float] = (0.0, 4.0)
    star_rv_kms: float = 300.0
    archetype_perturbation: float = 0.05
    forest_sigma_g: float = 1.4
    forest_corr_kms: float = 60.0
    max_tries: int = 50
    observe: ObserveConfig = field(default_factory=ObserveConfig)
    #: Surveys whose spectra are not flux-calibrated (6dFGS: counts with the instrument
    #: response). With a response fitted from training-side donors
    #: (:meth:`Engine.fit_responses`) their engine spectra are multiplied by it and get a
    #: tilt of order ``uncalibrated_tilt[0]`` with the measured residual scatter;
    #: without one, the tilt ``uncalibrated_tilt`` (order, sigma) stands in for it.
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


@dataclass
class SurveyResponse:
    """The mean instrument response of an uncalibrated survey (see :meth:`Engine.fit_responses`).

    Attributes
    ----------
    loglam : array
        log10 wavelengths (A, observed) of the bin centres.
    log_response : array
        Natural log of the response there, median 0.
    tilt_sigma : float
        Residual scatter of the donors around it (Legendre coefficients of the log, per order).
    n_donors : int
    """

    loglam: np.ndarray
    log_response: np.ndarray
    tilt_sigma: float
    n_donors: int

    def on(self, wave: np.ndarray) -> np.ndarray:
        """The multiplicative response on ``wave`` (constant beyond the fitted range)."""
        return np.exp(np.interp(np.log10(wave), self.loglam, self.log_response))


def _binned_log_median(wave: np.ndarray, flux: np.ndarray, edges: np.ndarray,
                       min_pixels: int = 5) -> np.ndarray:
    """ln of the median of ``flux`` (..., n) in each log10-wavelength bin (NaN: too few
    pixels or a non-positive median). Medians ignore emission lines and spikes."""
    idx = np.searchsorted(edges, np.log10(wave)) - 1
    out = np.full(flux.shape[:-1] + (edges.size - 1,), np.nan)
    for b in range(edges.size - 1):
        sel = idx == b
        if sel.sum() >= min_pixels:
            out[..., b] = np.median(flux[..., sel], axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(out > 0, np.log(np.where(out > 0, out, 1.0)), np.nan)


def _legendre_coefficients(x: np.ndarray, y: np.ndarray, order: int) -> np.ndarray | None:
    """Legendre coefficients 1..order of ``y(x)`` over its finite points (None: too few)."""
    ok = np.isfinite(y)
    if ok.sum() < 3 * (order + 1):
        return None
    return np.polynomial.legendre.legfit(x[ok], y[ok], order)[1:]


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
        #: survey -> fitted instrument response (uncalibrated surveys only)
        self.responses: dict[str, SurveyResponse] = {}
        #: survey -> ln(1+z) of its training-side labelled galaxies
        self.galaxy_redshifts: dict[str, np.ndarray] = {}

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

    def fit_responses(self, galaxies: list[Donor], bin_dex: float = 0.004, min_donors: int = 5,
                      seed: int = 0) -> dict[str, int]:
        """Estimate the instrument response of each uncalibrated survey from real galaxies
        with a redshift label of the *training side*, and the scatter around it.

        The response is the median over donors of ``real / model`` in bins of
        ``bin_dex`` (log10; medians in each bin, so emission lines and spikes do not
        count), with ``model`` the mean of the galaxy archetype rows at the donor's
        redshift, normalised to median 1. It therefore also holds the difference between
        the survey's mean galaxy and the engine's mean galaxy: engine spectra on that
        survey's grids get the shape its real spectra have. The residual tilt sigma is the
        scatter of the donors' Legendre coefficients (orders 1 .. ``uncalibrated_tilt[0]``)
        around the response, less (in quadrature) the scatter the archetype rows already
        make, and at least the calibrated surveys' ``observe.tilt_sigma``.

        Returns the number of donors used per survey (surveys with fewer than
        ``min_donors`` keep the fallback tilt).
        """
        cfg = self.config
        order = cfg.uncalibrated_tilt[0]
        galaxy = next((t for t in self.library.by_class("GALAXY") if t.archetypes is not None), None)
        counts: dict[str, int] = {}
        if galaxy is None:
            return counts
        rows = galaxy.archetypes @ galaxy.basis  # (n_rows, n_pix) rest frame
        for survey in cfg.uncalibrated_surveys:
            ds = [d for d in galaxies if d.survey == survey and d.labels.get("class") == "GALAXY"
                  and d.labels.get("z") is not None]
            ranges = np.array([np.log10(d.valid_wave[[0, -1]]) for d in ds]).reshape(-1, 2)
            if len(ds) < min_donors:
                counts[survey] = len(ds)
                continue
            edges = np.arange(ranges[:, 0].min(), ranges[:, 1].max() + bin_dex, bin_dex)
            centres = 0.5 * (edges[1:] + edges[:-1])
            ratios, xs, arch_dev = [], [], []
            for d in ds:
                z = float(d.labels["z"])
                v = d.valid
                models = rebin(10 ** galaxy.loglam * (1.0 + z), rows, d.wave[v])
                if not np.all(np.isfinite(models)):
                    continue  # the galaxy basis does not cover this donor at its z
                log_models = _binned_log_median(d.wave[v], models, edges)  # (n_rows, n_bins)
                covered = np.isfinite(log_models)
                with np.errstate(invalid="ignore", divide="ignore"):  # empty bins stay NaN
                    log_mean = np.log(np.where(covered, np.exp(log_models), 0.0).sum(0) / covered.sum(0))
                r = _binned_log_median(d.wave[v], d.flux[v], edges) - log_mean
                ratios.append(r - np.nanmedian(r))
                lw = np.log10(d.wave)
                xs.append(2.0 * (centres - lw[0]) / (lw[-1] - lw[0]) - 1.0)
                arch_dev.append(log_models - log_mean)
            if len(ratios) < min_donors:
                counts[survey] = len(ratios)
                continue
            ratios = np.array(ratios)
            enough = np.sum(np.isfinite(ratios), axis=0) >= 0.5 * len(ratios)
            log_resp = np.nanmedian(ratios[:, enough], axis=0)
            log_resp = median_filter(log_resp, size=3, mode="nearest") if log_resp.size >= 3 else log_resp
            log_resp = log_resp - np.median(log_resp)
            resp_all = np.interp(centres, centres[enough], log_resp)
            rng = np.random.default_rng(seed)
            real_c = [_legendre_coefficients(x, r - resp_all, order) for x, r in zip(xs, ratios, strict=True)]
            arch_c = [_legendre_coefficients(x, a[k], order)
                      for x, a in zip(xs, arch_dev, strict=True)
                      for k in rng.choice(len(a), size=min(len(a), 20), replace=False)]
            var_real = np.var([c for c in real_c if c is not None], axis=0).mean()
            var_arch = np.var([c for c in arch_c if c is not None], axis=0).mean()
            sigma = float(max(np.sqrt(max(var_real - var_arch, 0.0)), cfg.observe.tilt_sigma))
            self.responses[survey] = SurveyResponse(centres[enough], log_resp, sigma, len(ratios))
            counts[survey] = len(ratios)
            logger.info("%s response from %d galaxies: %.2f-%.2f (ln), residual tilt sigma %.3f "
                        "(real %.3f, archetypes %.3f)", survey, len(ratios), log_resp.min(), log_resp.max(),
                        sigma, np.sqrt(var_real), np.sqrt(var_arch))
        return counts

    def fit_redshift_priors(self, galaxies: list[Donor], min_donors: int = 5) -> dict[str, int]:
        """Keep each survey's redshift distribution of labelled galaxies (training side!).

        A survey's galaxies are not spread over z in [0, 1.5]: 6dFGS (K < 12.65) has
        almost none above z = 0.1, BOSS CMASS sits near 0.5. Where a survey has at least
        ``min_donors`` labelled galaxies, a fraction ``survey_z_fraction`` of the engine
        galaxies on its grids take one of those redshifts, jittered (see
        :class:`EngineConfig`). Returns the number of redshifts kept per survey."""
        by_survey: dict[str, list[float]] = {}
        for d in galaxies:
            z = d.labels.get("z")
            if d.labels.get("class") == "GALAXY" and z is not None and np.isfinite(float(z)):
                by_survey.setdefault(d.survey, []).append(float(z))
        self.galaxy_redshifts = {k: np.log1p(np.array(v)) for k, v in by_survey.items()
                                 if len(v) >= min_donors}
        counts = {k: len(v) for k, v in by_survey.items()}
        logger.info("galaxy redshift priors (labelled galaxies per survey): %s", counts)
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
            self._windows[key] = redshift_window(template, self.donors[donor_index].valid_wave)
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

    def _choose(self, spectype: str, cands, rng: np.random.Generator, survey: str = ""):
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
        survey_u = self.galaxy_redshifts.get(survey)
        if survey_u is not None and rng.random() < cfg.survey_z_fraction:
            u = survey_u[rng.integers(survey_u.size)] + cfg.survey_z_jitter * rng.standard_normal()
            z = float(np.expm1(u))
            z = 2.0 * lo - z if z < lo else z  # reflected at the window's low end (z >= 0)
            if z <= hi:
                return t, z
        cut = min(max(cfg.galaxy_low_z_max, lo), hi)
        if rng.random() < cfg.galaxy_low_z_fraction and cut > lo:
            return t, float(rng.uniform(lo, cut))
        return t, float(rng.uniform(cut if cut < hi else lo, hi))

    # ------------------------------------------------------------ sampling
    def observation_settings(self, donor: Donor) -> tuple[ObserveConfig, np.ndarray | None]:
        """How spectra are observed through ``donor``: the observation config and, for an
        uncalibrated survey with a fitted response, that response on ``donor.wave``."""
        cfg = self.config
        if donor.survey in self.responses:
            fitted = self.responses[donor.survey]
            return (replace(cfg.observe, tilt_order=cfg.uncalibrated_tilt[0], tilt_sigma=fitted.tilt_sigma),
                    fitted.on(donor.wave))
        if donor.survey in cfg.uncalibrated_surveys:
            return replace(cfg.observe, tilt_order=cfg.uncalibrated_tilt[0],
                           tilt_sigma=cfg.uncalibrated_tilt[1]), None
        return cfg.observe, None

    def sample_star(self, star: LibraryStar, rng: np.random.Generator,
                    donor_index: int | None = None) -> EngineSample:
        """A labelled library star observed through a donor (random unless ``donor_index``;
        :func:`omnispectra.engine.labelled.observe_star`). Labels ``class``, ``teff``,
        ``logg``, ``fe_h``, ``z``; ``meta['object_id']`` is the star's id.

        Raises
        ------
        OmniSpectraError
            No tried donor has enough valid pixels inside the star's range.
        """
        for _ in range(self.config.max_tries):
            di = int(rng.integers(len(self.donors))) if donor_index is None else int(donor_index)
            donor = self.donors[di]
            obs_cfg, response = self.observation_settings(donor)
            try:
                wave, flux, ivar, mask, labels = observe_star(star, donor, rng, obs_cfg, response,
                                                              self.config.star_rv_kms)
            except CoverageError:
                if donor_index is not None:
                    raise
                continue
            meta = {"survey": donor.survey, "template": f"library:{star.id}", "donor_id": donor.id,
                    "object_id": star.id}
            return EngineSample(wave, flux, ivar, mask, labels, meta)
        raise OmniSpectraError(f"no tried donor covers library star {star.id} "
                               f"(after {self.config.max_tries} tries)")

    def _draw_object(self, rng: np.random.Generator, spectype: str | None, donor_index: int | None):
        """``(class, template, z, rest flux, donor index)`` of one object; OmniSpectraError
        after ``max_tries`` draws without a template covering the drawn donor."""
        cfg = self.config
        classes = [c for c in CLASSES if cfg.class_priors.get(c, 0) > 0 and self.library.by_class(c)]
        if not classes:
            raise OmniSpectraError("the template library has no class with a positive prior")
        p = np.array([cfg.class_priors[c] for c in classes])
        for _ in range(cfg.max_tries):
            cls = spectype or classes[rng.choice(len(classes), p=p / p.sum())]
            di = int(rng.integers(len(self.donors))) if donor_index is None else int(donor_index)
            cands = self.candidates(cls, di)
            choice = self._choose(cls, cands, rng, self.donors[di].survey) if cands else None
            if choice is None:
                continue
            template, z = choice
            rest = self.draw_rest_flux(template, rng)
            if cls == "QSO":
                rest = np.where(10 ** template.loglam < LYMAN_LIMIT, np.clip(rest, 0.0, None), rest)
            return cls, template, z, rest, di
        raise OmniSpectraError(f"no {spectype or 'template'} covers the tried donor grids "
                               f"(after {cfg.max_tries} tries)")

    def _render(self, cls: str, template: TemplateBasis, z: float, rest: np.ndarray, di: int,
                rng: np.random.Generator, transmission: Any = None) -> EngineSample:
        """The object ``(template, z, rest)`` observed through donor ``di``."""
        donor = self.donors[di]
        obs_cfg, response = self.observation_settings(donor)
        flux, ivar, mask, _ = observe(template, rest, z, donor, rng, obs_cfg, transmission, response)
        sub = template.subtype if cls == "STAR" else ""
        labels = {"class": cls, "subclass": sub, "z": z}
        if cls == "STAR" and template.name.startswith(_PYHAMMER):
            # a composite's name is its spectral type: Teff on the dwarf scale (NaN for O/B/L)
            teff = type_teff(sub)[0]
            labels["teff"] = float("nan") if teff is None else teff
        meta = {"survey": donor.survey, "template": template.name, "donor_id": donor.id,
                "fe_h_bin": template.fe_h}
        return EngineSample(donor.wave.copy(), flux, ivar, mask, labels, meta)

    def second_donor(self, template: TemplateBasis, z: float, exclude: int,
                     rng: np.random.Generator) -> int | None:
        """A random donor other than ``exclude`` that can observe ``template`` at ``z``
        (grid covered, line spread not sharper than the template allows); None when
        ``max_tries`` draws find none."""
        for _ in range(self.config.max_tries):
            di = int(rng.integers(len(self.donors)))
            if di == exclude or template.line_width_ratio(self.donors[di].median_sigma_kms) > SIGMA_TOLERANCE:
                continue
            lo, hi = self._window(template, di)
            if lo <= z <= hi:
                return di
        return None

    def sample_pair(self, rng: np.random.Generator, spectype: str | None = None,
                    donor_index: int | None = None) -> tuple[EngineSample, EngineSample | None]:
        """One object observed through two different donors (a positive pair).

        Both views share the class, template member, rest-frame flux, redshift and, for
        quasars, the Lyman-alpha forest (drawn once on the template's observed grid);
        donor grid, line spread, noise, mask, signal-to-noise, tilt and response differ.
        The second view is None when no other donor covers the object. The first view
        follows the same draws as :meth:`sample` up to the forest, so it is not the
        sample :meth:`sample` gives for the same generator. ``donor_index`` fixes the first
        view's donor (as in :meth:`sample`). Raises as :meth:`sample`.
        """
        cfg = self.config
        cls, template, z, rest, di = self._draw_object(rng, spectype, donor_index)
        transmission = None
        if cls == "QSO":
            grid = template.loglam + np.log10(1.0 + z)
            forest = forest_transmission(grid, z_qso=z, rng=rng, sigma_g=cfg.forest_sigma_g,
                                         corr_kms=cfg.forest_corr_kms)

            def transmission(loglam_obs: np.ndarray) -> np.ndarray:  # one forest for both views
                return np.interp(loglam_obs, grid, forest)
        first = self._render(cls, template, z, rest, di, rng, transmission)
        other = self.second_donor(template, z, di, rng)
        if other is None:
            return first, None
        try:
            return first, self._render(cls, template, z, rest, other, rng, transmission)
        except CoverageError:  # the valid span of the other grid reaches past the template
            return first, None

    def sample(self, rng: np.random.Generator, spectype: str | None = None,
               donor_index: int | None = None) -> EngineSample:
        """One engine spectrum (see the module docstring).

        Raises
        ------
        OmniSpectraError
            No template of the class covers any tried donor grid.
        """
        cfg = self.config
        cls, template, z, rest, di = self._draw_object(rng, spectype, donor_index)
        transmission = None
        if cls == "QSO":
            transmission = functools.partial(forest_transmission, z_qso=z, rng=rng,
                                             sigma_g=cfg.forest_sigma_g, corr_kms=cfg.forest_corr_kms)
        return self._render(cls, template, z, rest, di, rng, transmission)
