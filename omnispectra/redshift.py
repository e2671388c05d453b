"""Template chi-square redshift scan over the Redrock bases (the classical anchor).

For one observed spectrum and every template basis (Redrock GALAXY, QSO LOZ/HIZ and the
STAR subtypes, loaded by :func:`omnispectra.templates.library.load_library`), the scan
finds ``chi2(z)`` over the *full* redshift range of the template's class, solving the
linear basis coefficients (plus an optional Legendre polynomial for a calibration tilt)
by inverse-variance weighted least squares at every trial redshift. The method follows
Redrock (Bailey et al., desihub/redrock): coarse scan, refinement of the best minima by a
parabola, ``z_err`` where chi-square rises by 1, ``deltachi2`` to the next distinct
solution, a bitmask of warnings (:class:`omnispectra.flags.Flag`).

How the scan is made cheap
--------------------------
On a uniform log10-wavelength grid a redshift is a pixel shift: with the observed
spectrum binned onto global pixels ``m * dloglam`` (observed frame) and the templates
bin-averaged onto the same pixels in the rest frame, trial redshift
``log10(1 + z) = s * dloglam`` pairs observed pixel ``m`` with rest pixel ``m - s``.
Every entry of the normal equations at every shift ``s`` is then a cross-correlation of
an observed-frame vector (``ivar``, ``ivar * flux``, ``ivar * polynomial``, ...) with a
rest-frame vector (products of basis rows), so all shifts come from a few dozen FFTs and
one batched ``solve``. Quasar bases get the mean Lyman-alpha forest transmission of
:mod:`omnispectra.templates.igm` (Kamble et al. 2020, as Redrock and the engine apply it):
it depends on the *observed* wavelength, so each basis row is split into its part blue
of Lyman-alpha (multiplied by the transmission ``g`` on the observed side) and the rest;
the two parts never overlap, so the products stay correlations. Flux below the Lyman
limit is modelled as zero.

Observed pixels a template does not reach at some ``z`` are left out of that ``chi2``;
to keep different ``z`` comparable, ``chi2`` is rescaled to the full pixel count
(``chi2 * n_valid / n_covered``) and shifts covering less than ``min_coverage`` of the
pixels are not scanned (:attr:`Flag.LITTLE_COVERAGE` when nothing is left).

The coarse scan runs at ``dloglam = 1e-4`` (69 km/s, one SDSS pixel); the best few
minima (``n_refine``, distinct by class or by more than ``velocity_separation_kms``) are
refit on the spectrum's own pixels with the fine (0.1 A-derived) templates resampled at
each trial ``z`` and a parabola through the chi-square minimum.

Template resolution: the Redrock star and galaxy bases are unresolved; they are
broadened to ``resolution_kms`` (default: SDSS/BOSS, R ~ 2000), the galaxy basis also by
a typical velocity dispersion (``galaxy_dispersion_kms``). A six-term Legendre
polynomial (``n_poly``) absorbs flux-calibration tilts: without it, SDSS-I galaxies
whose spectrophotometry does not match the basis continua were put at z ~ 1.5, and with
three terms instead of six 13 more of 99 6dFGS galaxies (uncalibrated counts) missed.

``z_err`` is the curvature error times ``sqrt(max(chi2 / dof, 1))``: template mismatch
inflates chi-square, and the raw curvature error was ~1.8 times too small against the SDSS
pipeline redshifts. Quasars add ``qso_systematic_kms`` in quadrature.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import fft as sp_fft

from .exceptions import OmniSpectraError
from .flags import ANOMALY_MODEL_FLOOR, MIN_SNR, Flag
from .spectrum import SpectrumData, spectrum_data
from .templates.igm import LYA_REST, LYMAN_LIMIT, tau_eff
from .templates.library import SURVEY_GRADE_SIGMA_KMS, TemplateBasis, TemplateLibrary, load_library
from .templates.resample import C_KMS, broaden_loglam, pixel_edges, rebin

__all__ = [
    "ScanConfig",
    "TemplateScan",
    "RedshiftResult",
    "RedshiftFitter",
    "TemplateModel",
    "fit_redshift",
    "fitter_for",
    "results_table",
    "dz_over_1pz",
    "residual_chi2",
]

logger = logging.getLogger(__name__)

#: Redrock's QSO basis ranges (REDSHIFTS HDUs), cut at the scanned QSO range.
QSO_SUBTYPE_Z = {"LOZ": (0.0, 1.6), "HIZ": (1.4, 7.0)}


@dataclass(frozen=True)
class ScanConfig:
    """Settings of the redshift scan (defaults follow Redrock where it has one)."""

    #: log10 step of the coarse scan grid (one SDSS/BOSS pixel, 69 km/s).
    dloglam: float = 1e-4
    #: Scanned redshift range per class; stars scan a radial velocity instead.
    galaxy_z: tuple[float, float] = (0.0, 1.6)
    qso_z: tuple[float, float] = (0.0, 4.5)
    star_velocity_kms: float = 500.0
    #: Legendre polynomial terms (observed frame) added to every basis (0: none).
    n_poly: int = 6
    #: Fraction of the valid pixels a template must cover at a trial redshift.
    min_coverage: float = 0.7
    #: Gaussian sigma (km/s) unresolved templates are broadened to (instrument).
    resolution_kms: float = SURVEY_GRADE_SIGMA_KMS
    #: Intrinsic velocity dispersion added in quadrature for the galaxy basis.
    galaxy_dispersion_kms: float = 150.0
    #: How many distinct coarse minima are refined.
    n_refine: int = 6
    #: Two solutions of one class closer than this are the same solution (Redrock: 1000).
    velocity_separation_kms: float = 1000.0
    #: Pixels with ``flux * sqrt(ivar)`` below minus this are left out (0: keep all). A
    #: sky-subtracted spectrum is not that far below zero; such pixels are detector or
    #: splice trash (6dFGS arm ends), and a template line with a negative coefficient
    #: would otherwise "fit" them at a wrong redshift.
    negative_clip_sigma: float = 5.0
    #: ``deltachi2`` below this sets :attr:`Flag.SMALL_DELTACHI2` (Redrock: 9).
    min_deltachi2: float = 9.0
    #: Median per-pixel S/N below this sets :attr:`Flag.LOW_SN` (:data:`omnispectra.flags.MIN_SNR`).
    min_snr: float = MIN_SNR
    #: Velocity error (km/s) added in quadrature to a quasar's ``z_err``: broad, shifted
    #: emission lines make quasar redshifts from different template sets differ by far more
    #: than the chi-square curvature says. ``scripts/eval_redshift.py`` fits it so that the
    #: SDSS/BOSS/eBOSS quasars' pulls against the pipeline have a median absolute value of
    #: 0.674: 170 km/s on the 66 such quasars visible here, where the curvature error alone
    #: gave a median absolute pull of 2.8-3.9.
    qso_systematic_kms: float = 170.0
    #: Half width (coarse pixels) and points of the refinement grid.
    refine_halfwidth: float = 2.0
    refine_points: int = 17
    #: The coarse chi-square is evaluated at every ``coarse_stride``-th shift of the coarse
    #: grid (the refinement's half width must cover it; Redrock's galaxy grid is 3 of our
    #: pixels, its quasar grid 5). 2 cut the fit of the 361 labelled spectra of
    #: ``scripts/eval_redshift.py`` by 9% with the same classes and redshifts within 0.0033
    #: (one thread), so 1 stays the default: the transforms, not the solves, dominate.
    coarse_stride: int = 1

    def systematic_kms(self, spectype: str) -> float:
        """The velocity error added in quadrature to ``z_err`` for a class."""
        return self.qso_systematic_kms if spectype == "QSO" else 0.0

    def z_range(self, spectype: str, subtype: str = "") -> tuple[float, float]:
        """The scanned redshift range of a template class (and QSO subtype)."""
        if spectype == "GALAXY":
            return self.galaxy_z
        if spectype == "QSO":
            lo, hi = QSO_SUBTYPE_Z.get(subtype, self.qso_z)
            return max(lo, self.qso_z[0]), min(hi, self.qso_z[1])
        if spectype == "STAR":
            beta = self.star_velocity_kms / C_KMS
            return float(np.sqrt((1 - beta) / (1 + beta)) - 1), float(np.sqrt((1 + beta) / (1 - beta)) - 1)
        raise OmniSpectraError(f"no redshift range for class {spectype!r}")


@dataclass
class PreparedTemplate:
    """A template made ready for one coarse grid step (rest frame)."""

    template: TemplateBasis
    igm: bool
    i0: int                      # global index of the first coarse rest pixel
    coarse_red: np.ndarray       # (n_b, L) rows at or redward of Lyman-alpha
    coarse_blue: np.ndarray      # (n_b, L) rows blueward of Lyman-alpha (zeros if not igm)
    coverage: np.ndarray         # (L,) 1 inside the template
    fine_edges: np.ndarray       # (L_f + 1,) rest wavelength pixel edges of the fine basis
    fine_cum: np.ndarray         # (n_b, L_f + 1) cumulative integral of the fine basis
    z_range: tuple[float, float]

    @property
    def name(self) -> str:
        return self.template.name


@dataclass
class TemplateScan:
    """The coarse ``chi2(z)`` of one template (for diagnostics and plots)."""

    name: str
    spectype: str
    subtype: str
    z: np.ndarray
    chi2: np.ndarray
    coverage: np.ndarray


@dataclass
class RedshiftResult:
    """One spectrum's template-fit answer (a Redrock-like catalogue row)."""

    spectype: str
    subtype: str
    z: float
    z_err: float
    chi2: float
    deltachi2: float
    n_pixels: int
    coefficients: np.ndarray
    flag: int
    template: str
    #: The other refined solutions, best first: (spectype, subtype, z, chi2).
    candidates: list[tuple[str, str, float, float]] = field(default_factory=list)
    #: The best solution of every class the scan fitted, by class (``GALAXY``, ``QSO``,
    #: ``STAR``); each one's ``deltachi2`` is against the next distinct solution.
    per_class: dict[str, RedshiftResult] = field(default_factory=dict, repr=False, compare=False)
    #: Chi-square of the best Legendre-only model on the fitted pixels (:func:`smooth_chi2`),
    #: recorded while the fit has them (``POOR_FIT`` compares it with ``chi2``); NaN without a fit.
    smooth_chi2: float = field(default=float("nan"), repr=False, compare=False)
    #: This solution's :func:`residual_chi2`: how far the data lie from the best model, with a
    #: model-error floor (the ``ANOMALY`` statistic of a row that has a template fit).
    residual_chi2: float = field(default=float("nan"), repr=False, compare=False)

    def residual_for(self, spectype: str) -> float:
        """The ``ANOMALY`` statistic of a row of class ``spectype``: this fit's
        :attr:`residual_chi2`, or NaN when no template of that class could fit the spectrum
        (an infrared star fitted only by redshifted galaxies: the fit says nothing of it).
        The runtime and the stored threshold (:func:`omnispectra.training.domain.measure_fits`)
        both apply this rule."""
        return self.residual_chi2 if spectype in self.per_class else float("nan")

    @property
    def class_chi2(self) -> dict[str, float]:
        """Chi-square of the best solution of every fitted class."""
        return {name: r.chi2 for name, r in self.per_class.items()}

    @classmethod
    def no_fit(cls, n_pixels: int, flag: Flag) -> RedshiftResult:
        """The row of a spectrum that could not be fitted (NaN values, ``flag`` says why)."""
        nan = float("nan")
        return cls("", "", nan, nan, nan, nan, n_pixels, np.zeros(0), int(flag), "")

    @property
    def velocity_kms(self) -> float:
        """Radial velocity (relativistic Doppler) for a star; meaningful for small ``z``."""
        a = (1.0 + self.z) ** 2
        return float(C_KMS * (a - 1.0) / (a + 1.0))

    def as_row(self) -> dict[str, Any]:
        """The row as a dict of plain values (``coefficients`` as a list)."""
        return {"spectype": self.spectype, "subtype": self.subtype, "z": self.z, "z_err": self.z_err,
                "chi2": self.chi2, "deltachi2": self.deltachi2, "n_pixels": self.n_pixels,
                "flag": int(self.flag), "template": self.template,
                "coefficients": [float(c) for c in self.coefficients]}


@dataclass
class TemplateModel:
    """A template model of one spectrum at a fixed redshift (:meth:`RedshiftFitter.model_at`)."""

    spectype: str
    subtype: str
    template: str
    z: float
    #: Basis coefficients, then the Legendre polynomial's.
    coefficients: np.ndarray
    #: Model flux on the spectrum's pixels (its flux unit); NaN where the template does not reach.
    flux: np.ndarray
    #: Chi-square of the fit (NaN when the coefficients were given, not fitted).
    chi2: float


def dz_over_1pz(z: Any, z_ref: Any) -> np.ndarray:
    """``|z - z_ref| / (1 + z_ref)``, the usual redshift error measure."""
    z, z_ref = np.asarray(z, dtype=np.float64), np.asarray(z_ref, dtype=np.float64)
    return np.abs(z - z_ref) / (1.0 + z_ref)


def results_table(results: Sequence[RedshiftResult], ids: Sequence[str] | None = None):
    """An :class:`astropy.table.Table` of results (``coefficients`` padded with NaN)."""
    from astropy.table import Table

    n_c = max((len(r.coefficients) for r in results), default=0)
    coeff = np.full((len(results), n_c), np.nan)
    for i, r in enumerate(results):
        coeff[i, :len(r.coefficients)] = r.coefficients
    cols = {
        "spectype": [r.spectype for r in results], "subtype": [r.subtype for r in results],
        "z": np.array([r.z for r in results]), "z_err": np.array([r.z_err for r in results]),
        "chi2": np.array([r.chi2 for r in results]),
        "deltachi2": np.array([r.deltachi2 for r in results]),
        "n_pixels": np.array([r.n_pixels for r in results], dtype=np.int64),
        "flag": np.array([int(r.flag) for r in results], dtype=np.int64),
        "template": [r.template for r in results], "coefficients": coeff,
    }
    table = Table(cols)
    if ids is not None:
        table.add_column(list(ids), name="id", index=0)
    table.meta["method"] = "omnispectra.redshift template chi-square scan (Redrock bases)"
    return table


def difference_ivar(flux: np.ndarray, bad: np.ndarray) -> float:
    """One inverse variance for a spectrum without uncertainties, from the robust scatter of
    its pixel-to-pixel differences (``sigma = 1.4826 MAD(diff) / sqrt(2)``), so that chi-square
    differences keep their meaning; 1 when that scatter is zero or undefined."""
    good = np.asarray(flux)[~np.asarray(bad, dtype=bool) & np.isfinite(flux)]
    if good.size < 3:
        return 1.0
    d = np.diff(good)
    sigma = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / np.sqrt(2.0)
    return 1.0 / sigma ** 2 if np.isfinite(sigma) and sigma > 0 else 1.0


def legendre_rows(x: np.ndarray, n: int) -> np.ndarray:
    """Legendre polynomials P_0..P_{n-1} at ``x`` in [-1, 1], shape (n, len(x))."""
    return np.polynomial.legendre.legvander(x, max(n - 1, 0)).T[:n]


def igm_transmission(wave_obs: np.ndarray) -> np.ndarray:
    """Mean Lyman-alpha transmission at observed wavelengths (applied only to rest < Lya)."""
    z_abs = np.clip(wave_obs / LYA_REST - 1.0, 0.0, None)
    return np.exp(-tau_eff(z_abs))


def _correlate(obs: np.ndarray, tmpl: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """``c[p, k] = sum_i obs[p, i + lags[k]] * tmpl[p, i]`` for every row pair.

    By FFT, except for a few lags (a star's velocity range), where direct sums are cheaper.
    """
    n_obs, n_tmpl = obs.shape[1], tmpl.shape[1]
    if lags.size <= 64:
        out = np.zeros((obs.shape[0], lags.size))
        for k, lag in enumerate(lags):
            lo, hi = max(0, -int(lag)), min(n_tmpl, n_obs - int(lag))
            if hi > lo:
                out[:, k] = np.einsum("pi,pi->p", obs[:, lo + lag:hi + lag], tmpl[:, lo:hi])
        return out
    n = sp_fft.next_fast_len(n_obs + n_tmpl, real=True)
    prod = sp_fft.rfft(obs, n, axis=1) * np.conj(sp_fft.rfft(tmpl, n, axis=1))
    return sp_fft.irfft(prod, n, axis=1)[:, lags % n]


class RedshiftFitter:
    """Full-range template chi-square redshift fits of single spectra.

    Parameters
    ----------
    library : TemplateLibrary, optional
        Templates to fit; default the Redrock bases of ``directory`` (PyHammer composites
        and the old ``QSO-None`` basis are not used).
    directory : path, optional
        Template folder or compact ``.npz`` file (else ``$OMNISPECTRA_TEMPLATES``) when
        ``library`` is not given (loaded and validated by
        :func:`~omnispectra.templates.library.load_library`).
    config : ScanConfig, optional
    classes : sequence of str, optional
        Restrict to these classes (``GALAXY``, ``QSO``, ``STAR``).
    """

    def __init__(self, library: TemplateLibrary | None = None, directory: str | os.PathLike | None = None,
                 config: ScanConfig | None = None, classes: Sequence[str] | None = None) -> None:
        self.config = config or ScanConfig()
        if library is None:
            library = load_library(directory, pyhammer=False)
        #: The templates this fitter was made from (``omnispectra.pretrained.templates_meta``).
        self.library = library
        templates = [t for t in library.templates if t.name.startswith("redrock:")
                     and (classes is None or t.spectype in classes)]
        if not templates:
            raise OmniSpectraError("no Redrock templates to fit (load_library found none of the classes)")
        self.prepared = [self._prepare(t) for t in templates]

    # ------------------------------------------------------------------ templates
    def _prepare(self, t: TemplateBasis) -> PreparedTemplate:
        cfg = self.config
        basis = t.basis
        target = cfg.resolution_kms ** 2 + (cfg.galaxy_dispersion_kms ** 2 if t.spectype == "GALAXY" else 0.0)
        extra = float(np.sqrt(max(target - t.sigma_kms ** 2, 0.0)))
        if extra > 0:
            basis = broaden_loglam(basis, t.dloglam, extra)
        fine_wave = 10 ** t.loglam
        igm = t.spectype == "QSO"
        if igm:
            basis = np.where(fine_wave < LYMAN_LIMIT, 0.0, basis)
        d = cfg.dloglam
        i_lo = int(np.ceil(t.loglam[0] / d)) + 1
        i_hi = int(np.floor(t.loglam[-1] / d)) - 1
        coarse_wave = 10 ** (np.arange(i_lo, i_hi + 1) * d)
        coarse = rebin(fine_wave, basis, coarse_wave)
        good = np.all(np.isfinite(coarse), axis=0)
        first, last = np.flatnonzero(good)[[0, -1]]
        coarse, coarse_wave = coarse[:, first:last + 1], coarse_wave[first:last + 1]
        blue = igm & (coarse_wave < LYA_REST)
        edges = pixel_edges(fine_wave)
        cum = np.zeros((basis.shape[0], edges.size))
        np.cumsum(basis * np.diff(edges), axis=1, out=cum[:, 1:])
        return PreparedTemplate(template=t, igm=igm, i0=i_lo + int(first),
                         coarse_red=np.where(blue, 0.0, coarse), coarse_blue=np.where(blue, coarse, 0.0),
                         coverage=np.ones(coarse.shape[1]), fine_edges=edges, fine_cum=cum,
                         z_range=cfg.z_range(t.spectype, t.subtype))

    def _fine_model(self, p: PreparedTemplate, edges_obs: np.ndarray, z: float) -> np.ndarray:
        """Fine basis bin-averaged over observed pixels at redshift ``z``; NaN outside."""
        rest = edges_obs / (1.0 + z)
        at = np.stack([np.interp(rest, p.fine_edges, row) for row in p.fine_cum])
        out = np.diff(at, axis=1) / np.diff(rest)
        outside = (rest[:-1] < p.fine_edges[0]) | (rest[1:] > p.fine_edges[-1])
        out[:, outside] = np.nan
        return out

    # ------------------------------------------------------------------ fitting
    def fit(self, spectrum: Any = None, flux: Any = None, ivar: Any = None, mask: Any = None, *,
            wavelength: Any = None, return_scans: bool = False, spectype: str | None = None):
        """Fit one spectrum (a specutils spectrum or ``(wavelength, flux, ivar, mask)`` arrays).

        ``spectype`` (``GALAXY``, ``QSO``, ``STAR``) reports the best solution of that class
        when the scan found one (else the overall best); its ``deltachi2`` is still the
        chi-square of the next distinct solution minus its own, so it is negative when
        another class fits better. ``candidates[0]`` is always the overall best, and
        ``per_class`` holds the best solution of every class (each class's best coarse
        minimum is always refined), so one fit serves any class chosen afterwards. A spectrum
        without uncertainties gets one inverse variance from the scatter of its
        pixel-to-pixel differences, so that ``deltachi2`` keeps its meaning.

        Returns
        -------
        RedshiftResult, or (RedshiftResult, list of TemplateScan) with ``return_scans``.

        Raises
        ------
        InvalidSpectrumError, SpectrumTypeError
            Non-finite wavelengths; mismatched shapes or a 2-D flux (from
            :func:`~omnispectra.spectrum.spectrum_data`).
        """
        data = spectrum_data(spectrum, flux, ivar, mask, wavelength=wavelength)
        return self.fit_data(data, return_scans=return_scans, spectype=spectype)

    def fit_data(self, data: SpectrumData, *, return_scans: bool = False, spectype: str | None = None):
        """:meth:`fit` of arrays already made by :func:`~omnispectra.spectrum.spectrum_data`
        (the API's inputs make them once per spectrum)."""
        wave, flux_a, ivar_a = fit_arrays(data, self.config)
        early = unfittable(wave, ivar_a)
        if early is not None:
            return (early, []) if return_scans else early
        scans, minima = self._coarse_scan(wave, flux_a, ivar_a)
        result = self._refine(wave, flux_a, ivar_a, minima, spectype)
        finish_result(result, wave, flux_a, ivar_a, self.config)
        return (result, scans) if return_scans else result

    def model_at(self, spectrum: Any = None, flux: Any = None, ivar: Any = None, mask: Any = None, *,
                 z: float, spectype: str, subtype: str | None = None,
                 coefficients: Any = None) -> TemplateModel:
        """The best-fit template model of one spectrum at a given redshift and class.

        The spectrum is given as to :meth:`fit` (a specutils spectrum or arrays).
        For drawing a catalogue row's solution: the templates of ``spectype`` (and
        ``subtype`` when given; a QSO's subtype is chosen by the range holding ``z``) are
        fitted at ``z`` exactly as :meth:`fit` refines a solution (basis plus Legendre
        polynomial, the same pixel weights), and the one of least chi-square is returned.
        With ``coefficients`` (a catalogue's stored fit, basis then polynomial; NaN padding
        is dropped) the model is evaluated with them instead of being refitted; the class
        and subtype must then name one template.

        Raises
        ------
        OmniSpectraError
            No template of that class (and subtype), coefficients of the wrong length, or no
            template covering enough of the spectrum at ``z``.
        """
        wave, flux_a, ivar_a = fit_arrays(spectrum_data(spectrum, flux, ivar, mask), self.config)
        chosen = [p for p in self.prepared if p.template.spectype == spectype
                  and (subtype in (None, "") or p.template.subtype == subtype)]
        in_range = [p for p in chosen if p.z_range[0] - 1e-9 <= z <= p.z_range[1] + 1e-9]
        chosen = in_range or chosen
        if not chosen:
            raise OmniSpectraError(f"no template of class {spectype!r}"
                                   + (f" and subtype {subtype!r}" if subtype else "") + " to draw")
        edges = pixel_edges(wave)
        lw = np.log10(wave)
        poly = legendre_rows(2.0 * (lw - lw[0]) / max(lw[-1] - lw[0], 1e-12) - 1.0, self.config.n_poly)
        if coefficients is not None:
            if len(chosen) > 1:
                names = ", ".join(p.name for p in chosen)
                raise OmniSpectraError(f"coefficients need one template; {spectype} at z = {z} has "
                                       f"{len(chosen)} ({names}): give the subtype")
            return self._model_with(chosen[0], z, wave, edges, poly, coefficients)
        best = None
        for p in chosen:
            chi2, coef, model, covered = self._fit_at(p, float(z), wave, edges, flux_a, ivar_a, poly)
            if coef is not None and (best is None or chi2 < best.chi2):
                best = TemplateModel(p.template.spectype, p.template.subtype, p.name, float(z),
                                     np.asarray(coef), np.where(covered, model, np.nan), float(chi2))
        if best is None:
            raise OmniSpectraError(f"no {spectype} template covers enough of the spectrum at z = {z:.5f}")
        return best

    def _model_with(self, p: PreparedTemplate, z: float, wave, edges, poly, coefficients) -> TemplateModel:
        """The model of template ``p`` at ``z`` with given coefficients (basis, then polynomial)."""
        coef = np.asarray(coefficients, dtype=np.float64).ravel()
        coef = coef[np.isfinite(coef)]
        basis = self._fine_model(p, edges, float(z))
        if coef.size != basis.shape[0] + poly.shape[0]:
            raise OmniSpectraError(f"{coef.size} coefficients for template {p.name} at z = {z}, which "
                                   f"has {basis.shape[0]} basis rows and {poly.shape[0]} polynomial terms")
        if p.igm:
            blue = wave / (1.0 + z) < LYA_REST
            basis = np.where(blue, basis * igm_transmission(wave), basis)
        model = coef @ np.vstack([basis, poly])  # NaN where the template does not reach
        return TemplateModel(p.template.spectype, p.template.subtype, p.name, float(z), coef, model,
                             float("nan"))

    def _coarse_scan(self, wave, flux, ivar):
        frame = coarse_frame(wave, ivar, self.config.dloglam)
        w, wf, wff, counts = (np.bincount(frame.index, weights=v, minlength=frame.n_obs)
                              for v in (ivar[frame.valid], (ivar * flux)[frame.valid],
                                        (ivar * flux ** 2)[frame.valid], None))
        counts = counts.astype(np.float64)
        g = igm_transmission(frame.wave)
        poly = legendre_rows(np.linspace(-1.0, 1.0, frame.n_obs), self.config.n_poly)
        scans, minima = [], []
        for p in self.prepared:
            shifts = scan_shifts(p, self.config.dloglam, self.config.coarse_stride)
            chi2, cover = self._shift_chi2(p, w, wf, wff, counts, g, poly, shifts + p.i0 - frame.j0)
            z = 10 ** (shifts * self.config.dloglam) - 1.0
            scans.append(TemplateScan(p.name, p.template.spectype, p.template.subtype, z, chi2, cover))
            minima += local_minima(p, z, chi2, 3 * self.config.n_refine)
        return scans, minima

    def _shift_chi2(self, p, w, wf, wff, counts, g, poly, lags):
        """Coarse ``chi2`` (rescaled to all valid pixels) and coverage at every lag."""
        n = p.coarse_red.shape[0] + poly.shape[0]
        terms = normal_terms(p, poly.shape[0])
        bases = {"w": w, "wf": wf}
        obs_rows = [observed_row(bases, key, g, poly) for _, _, _, key, _ in terms] + [wff, counts]
        tmpl_rows = [t for *_, t in terms] + [p.coverage, p.coverage]
        corr = _correlate(np.array(obs_rows), np.array(tmpl_rows), lags)
        big_m = np.zeros((lags.size, n, n))
        y = np.zeros((lags.size, n))
        # corr's last two rows (wff, counts) have no target; they are read below
        for row, (kind, ca, cb, _, _) in zip(corr, terms, strict=False):
            if kind == "y":
                y[:, ca] += row
            else:
                big_m[:, ca, cb] += row
                if ca != cb:
                    big_m[:, cb, ca] += row
        ff, n_cov = corr[-2], corr[-1]
        cover = np.clip(n_cov / counts.sum(), 0.0, 1.0)
        diag = np.einsum("kii->ki", big_m)
        scale = np.sqrt(np.where(diag > 0, diag, 1.0))
        ms = big_m / scale[:, :, None] / scale[:, None, :] + 1e-9 * np.eye(n)
        ys = y / scale
        coef = np.linalg.solve(ms, ys[..., None])[..., 0]
        chi2 = ff - np.einsum("ki,ki->k", ys, coef)
        chi2 = np.where(cover >= self.config.min_coverage, chi2 / np.maximum(cover, 1e-12), np.nan)
        return chi2, cover

    def _fit_at(self, p: PreparedTemplate, z: float, wave, edges, flux, ivar, poly):
        """Exact weighted least squares at one ``z``: (chi2 rescaled, coefficients, model, covered)."""
        model = self._fine_model(p, edges, z)
        covered = np.all(np.isfinite(model), axis=0) & (ivar > 0)
        n_valid = int((ivar > 0).sum())
        if covered.sum() < max(10, self.config.min_coverage * n_valid):
            return np.inf, None, None, covered
        if p.igm:
            blue = wave / (1.0 + z) < LYA_REST
            model = np.where(blue, model * igm_transmission(wave), model)
        design = np.vstack([np.nan_to_num(model), poly])  # (n, N)
        sw = np.sqrt(ivar * covered)
        a = (design * sw).T
        coef, *_ = np.linalg.lstsq(a, flux * sw, rcond=None)
        resid = (flux - coef @ design) * sw
        chi2 = float(resid @ resid) * n_valid / covered.sum()
        return chi2, coef, coef @ design, covered

    def _refine(self, wave, flux, ivar, minima, spectype: str | None = None) -> RedshiftResult:
        cfg = self.config
        n_valid = int((ivar > 0).sum())
        edges = pixel_edges(wave)
        poly = observed_legendre(wave, cfg.n_poly)
        refined = []
        for _, p, z0, edge in choose_minima(minima, cfg):
            zz = refine_grid(p, z0, cfg)
            chi = np.array([self._fit_at(p, zi, wave, edges, flux, ivar, poly)[0] for zi in zz])
            z_best, z_err, flag = parabola_minimum(zz, chi, p.z_range, edge)
            chi2, coef, model, covered = self._fit_at(p, z_best, wave, edges, flux, ivar, poly)
            if coef is not None:
                refined.append(refined_solution(p, z_best, z_err, flag, chi2, coef, model, covered, flux,
                                                ivar, cfg))
        return assemble_result(refined, n_valid, spectype, cfg)


# ---------------------------------------------------------------------- steps shared with redshift_batch
#: Signal-to-noise per pixel no instrument reaches: the fit caps the inverse variance there
#: (a numerical guard; real spectra stay far below it, and the training domain flags
#: inputs whose errors are beyond its spectra's).
MAX_PIXEL_SNR = 1e6


def fit_arrays(data: Any, config: ScanConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(wavelength, flux, ivar)`` as fitted: bad, non-finite and far-negative pixels get
    ``ivar = 0`` and ``flux = 0``; a spectrum without uncertainties gets :func:`difference_ivar`.

    ``data`` is a :class:`~omnispectra.spectrum.SpectrumData`.
    """
    wave, flux_a, bad = data.wavelength, np.array(data.flux, dtype=np.float64), data.bad
    ivar_a = np.array(data.ivar, dtype=np.float64)
    if not data.has_ivar or not np.any(ivar_a):
        ivar_a = np.full_like(flux_a, difference_ivar(flux_a, bad))
    ivar_a = np.where(bad | ~np.isfinite(flux_a) | ~np.isfinite(ivar_a) | (ivar_a < 0), 0.0, ivar_a)
    flux_a = np.where(ivar_a > 0, flux_a, 0.0)
    if config.negative_clip_sigma > 0:
        ivar_a = np.where(flux_a * np.sqrt(ivar_a) < -config.negative_clip_sigma, 0.0, ivar_a)
        flux_a = np.where(ivar_a > 0, flux_a, 0.0)
    scale = float(np.median(np.abs(flux_a[ivar_a > 0]))) if np.any(ivar_a > 0) else 0.0
    if scale > 0:  # absurd errors (ivar 1e300) would only overflow the chi-square sums
        ivar_a = np.minimum(ivar_a, (MAX_PIXEL_SNR / scale) ** 2)
    return np.asarray(wave, dtype=np.float64), flux_a, ivar_a


def unfittable(wave: np.ndarray, ivar: np.ndarray) -> RedshiftResult | None:
    """The :attr:`Flag.BAD_INPUT` row of a spectrum too poor to fit (None when it can be fitted)."""
    n_valid = int((ivar > 0).sum())
    if n_valid < 10 or np.any(wave <= 0):
        return RedshiftResult.no_fit(n_valid, Flag.BAD_INPUT)
    return None


def flag_low_snr(result: RedshiftResult, flux: np.ndarray, ivar: np.ndarray, config: ScanConfig) -> None:
    """Set :attr:`Flag.LOW_SN` on ``result`` when the median per-pixel S/N is below ``min_snr``."""
    valid = ivar > 0
    if float(np.median(np.abs(flux[valid]) * np.sqrt(ivar[valid]))) < config.min_snr:
        result.flag |= int(Flag.LOW_SN)


def smooth_chi2(wave: np.ndarray, flux: np.ndarray, ivar: np.ndarray, n_poly: int) -> float:
    """Chi-square of the best Legendre-only model (``n_poly`` terms in log wavelength).

    The same pixels and weights as the template fit (:func:`fit_arrays`), the same polynomial
    as its nuisance terms: what a smooth model without any spectral feature achieves.
    """
    use = ivar > 0
    if use.sum() <= n_poly:
        return float("nan")
    lw = np.log10(wave)
    rows = legendre_rows(2.0 * (lw - lw[0]) / max(lw[-1] - lw[0], 1e-12) - 1.0, max(n_poly, 1))
    w = np.sqrt(ivar[use])
    design = rows[:, use].T * w[:, None]
    coef, *_ = np.linalg.lstsq(design, flux[use] * w, rcond=None)
    resid = flux[use] * w - design @ coef
    return float(resid @ resid)


def finish_result(result: RedshiftResult, wave: np.ndarray, flux: np.ndarray, ivar: np.ndarray,
                  config: ScanConfig) -> None:
    """The last steps of a fit on its arrays (:func:`fit_arrays`): :func:`flag_low_snr`, and the
    :func:`smooth_chi2` recorded on the result and on every ``per_class`` result."""
    flag_low_snr(result, flux, ivar, config)
    with np.errstate(all="ignore"):  # absurd errors (ivar 1e300) overflow: then NaN (POOR_FIT)
        value = smooth_chi2(wave, flux, ivar, config.n_poly)
    for r in (result, *result.per_class.values()):
        r.smooth_chi2 = value


@dataclass(frozen=True)
class CoarseFrame:
    """A spectrum's valid pixels on the global coarse grid (pixel ``j`` at ``10**(j * dloglam)``)."""

    valid: np.ndarray      # (N,) pixels with ivar > 0
    index: np.ndarray      # coarse pixel of each valid pixel, minus j0
    j0: int
    n_obs: int
    dloglam: float

    @property
    def wave(self) -> np.ndarray:
        return 10 ** ((self.j0 + np.arange(self.n_obs)) * self.dloglam)


def coarse_frame(wave: np.ndarray, ivar: np.ndarray, dloglam: float) -> CoarseFrame:
    """Where the valid pixels of a spectrum fall on the coarse scan grid."""
    valid = ivar > 0
    m = np.rint(np.log10(wave[valid]) / dloglam).astype(np.int64)
    j0 = int(m.min())
    return CoarseFrame(valid, m - j0, j0, int(m.max()) - j0 + 1, dloglam)


def scan_shifts(p: PreparedTemplate, dloglam: float, stride: int = 1) -> np.ndarray:
    """The coarse pixel shifts (``log10(1 + z) / dloglam``) scanned for template ``p``: every
    ``stride``-th from the range's start, and its last."""
    lo, hi = p.z_range
    s_lo = int(np.ceil(np.log10(1.0 + lo) / dloglam))
    s_hi = int(np.floor(np.log10(1.0 + hi) / dloglam))
    if s_hi < s_lo:
        s_lo = s_hi = int(np.rint(np.log10(1.0 + 0.5 * (lo + hi)) / dloglam))
    shifts = np.arange(s_lo, s_hi + 1, int(stride))
    return shifts if shifts[-1] == s_hi else np.append(shifts, s_hi)


def local_minima(p: PreparedTemplate, z: np.ndarray, chi2: np.ndarray, n_keep: int) -> list[tuple]:
    """The best ``n_keep`` local minima of a coarse scan (plateaus and range ends included),
    as ``(chi2, template, z, at_range_end)``, best first."""
    ok = np.isfinite(chi2)
    if not ok.any():
        return []
    c = np.where(ok, chi2, np.inf)
    left = np.r_[np.inf, c[:-1]]
    right = np.r_[c[1:], np.inf]
    idx = np.flatnonzero((c <= left) & (c <= right) & ok)
    return [(float(c[i]), p, float(z[i]), i == 0 or i == len(z) - 1)
            for i in idx[np.argsort(c[idx])][:n_keep]]


def normal_terms(p: PreparedTemplate, n_poly: int) -> list[tuple[str, int, int, tuple, np.ndarray]]:
    """The cross-correlations that make the normal equations of template ``p`` at every lag.

    Each is ``(kind, a, b, observed_key, rest_vector)``: ``kind`` ``"y"`` adds to the
    right-hand side ``y[a]``, ``"M"`` to ``M[a, b]`` (and ``M[b, a]``); ``observed_key`` names the
    observed-frame vector (:func:`observed_row`): ``"w"`` (ivar) or ``"wf"`` (ivar * flux) times
    the IGM transmission ``"g"`` and Legendre rows ``k`` it lists.
    """
    n_b = p.coarse_red.shape[0]
    # pieces: (component, observed-side factors, rest-side vector)
    pieces = [(b, (), p.coarse_red[b]) for b in range(n_b)]
    if p.igm:
        pieces += [(b, ("g",), p.coarse_blue[b]) for b in range(n_b)]
    pieces += [(n_b + k, (k,), p.coverage) for k in range(n_poly)]
    terms = []
    for a, (ca, ha, ta) in enumerate(pieces):
        terms.append(("y", ca, ca, ("wf", *ha), ta))
        for cb, hb, tb in pieces[a:]:
            t = ta * tb
            if t.any():
                terms.append(("M", ca, cb, ("w", *ha, *hb), t))
    return terms


def observed_row(bases: dict[str, Any], key: tuple, g: Any, poly: Any) -> Any:
    """The observed-frame vector ``key`` names (:func:`normal_terms`), factors multiplied left to
    right; works on numpy arrays and torch tensors (``poly[k]`` indexes the first axis)."""
    row = bases[key[0]]
    for factor in key[1:]:
        row = row * (g if factor == "g" else poly[factor])
    return row


def observed_legendre(wave: np.ndarray, n_poly: int) -> np.ndarray:
    """Legendre rows over a spectrum's own pixels (``log10`` wavelength mapped onto [-1, 1])."""
    lw = np.log10(wave)
    x = 2.0 * (lw - lw[0]) / max(lw[-1] - lw[0], 1e-12) - 1.0
    return legendre_rows(x, n_poly)


def choose_minima(minima: list[tuple], config: ScanConfig) -> list[tuple]:
    """The coarse minima to refine: every class's best first (``per_class`` compares the
    classes), then the rest by chi-square, one per class within ``velocity_separation_kms``,
    at most ``n_refine``."""
    dv = config.velocity_separation_kms / C_KMS
    ordered = sorted(minima, key=lambda c: c[0])
    firsts: dict[str, tuple] = {}
    for c in ordered:
        firsts.setdefault(c[1].template.spectype, c)
    chosen: list[tuple] = []
    for cand in list(firsts.values()) + ordered:
        _, p, z, _ = cand
        if any(q.template.spectype == p.template.spectype
               and abs(z - zq) / (1.0 + zq) < dv for _, q, zq, _ in chosen):
            continue
        chosen.append(cand)
        if len(chosen) >= config.n_refine:
            break
    return chosen


def refine_grid(p: PreparedTemplate, z0: float, config: ScanConfig) -> np.ndarray:
    """The trial redshifts of the refinement around a coarse minimum ``z0`` (inside ``p``'s range)."""
    step = config.dloglam * config.refine_halfwidth
    zz = 10 ** (np.log10(1.0 + z0) + np.linspace(-step, step, config.refine_points)) - 1.0
    lo, hi = p.z_range
    zz = zz[(zz >= lo - 1e-12) & (zz <= hi + 1e-12)]
    return zz if zz.size >= 3 else np.array([z0])


def parabola_minimum(zz: np.ndarray, chi: np.ndarray, z_range: tuple[float, float],
                     edge: bool) -> tuple[float, float, Flag]:
    """``(z_best, z_err, flag)`` from a parabola through the well of ``chi(zz)``.

    ``z_err`` is NaN (and :attr:`Flag.BAD_MINFIT` set) when the parabola opens downward or its
    vertex leaves the grid; a minimum at a grid end inside the scanned range is also BAD_MINFIT.
    """
    lo, hi = z_range
    flag = Flag.Z_EDGE if edge else Flag(0)
    i_min = int(np.argmin(chi))
    z_best, z_err = float(zz[i_min]), float("nan")
    if not (np.isfinite(chi[i_min]) and zz.size >= 3):
        return z_best, z_err, flag
    use = np.isfinite(chi)
    sel = use & (chi < chi[i_min] + 50.0)  # the well of the minimum (Redrock: 50)
    if sel.sum() < 3:
        sel = use
    a2, a1, _ = np.polyfit(zz[sel] - zz[i_min], chi[sel], 2)
    if a2 > 0 and abs(-a1 / (2 * a2)) <= (zz[-1] - zz[0]) / 2:
        z_best = float(zz[i_min] - a1 / (2 * a2))
        z_err = float(1.0 / np.sqrt(a2))
    else:
        flag |= Flag.BAD_MINFIT
    if i_min in (0, zz.size - 1) and not (zz[0] <= lo + 1e-9 or zz[-1] >= hi - 1e-9):
        flag |= Flag.BAD_MINFIT
    return z_best, z_err, flag


def residual_chi2(flux: np.ndarray, model: np.ndarray, ivar: np.ndarray, covered: np.ndarray,
                  floor: float = ANOMALY_MODEL_FLOOR) -> float:
    """Mean over the fitted pixels of ``(flux - model)**2 / (1 / ivar + (floor * std)**2)``.

    ``std`` is the standard deviation of the fitted flux, so this is the chi-square per
    pixel with a model-error floor of ``floor`` times the spectrum's own scale, as the
    masked-reconstruction statistic (:func:`omnispectra.inference.scoring.masked_chi2`):
    a spectrum no template describes, even allowing for template error, scores high
    (spikes, calibration breaks, splices), and bright spectra are not all anomalous.
    NaN without fitted pixels.
    """
    use = np.asarray(covered, dtype=bool) & (ivar > 0)
    if not use.any():
        return float("nan")
    f, iv = flux[use], ivar[use]
    var_floor = (floor * float(np.std(f))) ** 2
    return float(np.mean((f - model[use]) ** 2 * iv / (1.0 + var_floor * iv)))


def refined_solution(p: PreparedTemplate, z_best: float, z_err: float, flag: Flag, chi2: float,
                     coef: np.ndarray, model: np.ndarray | None, covered: np.ndarray, flux: np.ndarray,
                     ivar: np.ndarray, config: ScanConfig) -> tuple:
    """One refined solution ``(chi2, template, z, z_err, coefficients, flag, residual)``: ``z_err``
    inflated by ``sqrt(chi2 / dof)`` and the class systematic, Z_EDGE and NEGATIVE_MODEL set,
    and the model's :func:`residual_chi2` (NaN without a model)."""
    n_valid = int((ivar > 0).sum())
    lo, hi = p.z_range
    z_err *= float(np.sqrt(max(chi2 / max(n_valid - coef.size, 1), 1.0)))
    z_err = float(np.hypot(z_err, config.systematic_kms(p.template.spectype) / C_KMS * (1.0 + z_best)))
    if z_best <= lo + 1e-9 or z_best >= hi - 1e-9:
        flag |= Flag.Z_EDGE
    if model is not None:
        sig = np.sqrt(ivar[covered])
        neg = (model[covered] * sig) < -3.0
        if neg.mean() > 0.01:
            flag |= Flag.NEGATIVE_MODEL
    residual = float("nan") if model is None else residual_chi2(flux, model, ivar, covered)
    return chi2, p, z_best, z_err, coef, flag, residual


def assemble_result(refined: list[tuple], n_valid: int, spectype: str | None,
                    config: ScanConfig) -> RedshiftResult:
    """The :class:`RedshiftResult` of a spectrum's refined solutions (:func:`refined_solution`):
    the best of class ``spectype`` (else the overall best), with ``per_class`` and ``candidates``."""
    if not refined:
        return RedshiftResult.no_fit(n_valid, Flag.LITTLE_COVERAGE)
    dv = config.velocity_separation_kms / C_KMS
    refined = sorted(refined, key=lambda r: r[0])
    cands = [(r[1].template.spectype, r[1].template.subtype, float(r[2]), float(r[0])) for r in refined]

    def result(pick: int) -> RedshiftResult:
        chi2, p, z_best, z_err, coef, flag, residual = refined[pick]
        others = [r for k, r in enumerate(refined) if k != pick and (
            r[1].template.spectype != p.template.spectype or abs(r[2] - z_best) / (1.0 + z_best) >= dv)]
        deltachi2 = float(others[0][0] - chi2) if others else float("nan")
        if others and deltachi2 < config.min_deltachi2:
            flag |= Flag.SMALL_DELTACHI2
        if not np.isfinite(z_best) or not np.isfinite(chi2):
            flag |= Flag.NONFINITE
        return RedshiftResult(p.template.spectype, p.template.subtype, float(z_best), z_err, float(chi2),
                              deltachi2, n_valid, np.asarray(coef, dtype=np.float64), int(flag), p.name,
                              candidates=cands, residual_chi2=residual)

    per_class: dict[str, RedshiftResult] = {}
    for k, r in enumerate(refined):
        if r[1].template.spectype not in per_class:
            per_class[r[1].template.spectype] = result(k)
    best = per_class.get(spectype) or per_class[refined[0][1].template.spectype]
    for r in per_class.values():
        r.per_class = per_class
    return best


_DEFAULT_FITTERS: dict[tuple, RedshiftFitter] = {}

def fitter_for(templates: str | os.PathLike | RedshiftFitter | None = None,
               config: ScanConfig | None = None) -> RedshiftFitter:
    """A :class:`RedshiftFitter` of the templates :func:`omnispectra.pretrained.resolve_templates`
    picks (``templates`` > ``$OMNISPECTRA_TEMPLATES`` > the bundled compact ones), loaded once
    per path and config and then reused; a fitter is returned as it is.

    Raises
    ------
    TemplatesNotFoundError, InvalidTemplatesError
        No templates where asked, or a template file that is unreadable or degenerate.
    """
    # imported here: pretrained loads torch, which the fit itself never needs
    from .pretrained import resolve_templates

    if isinstance(templates, RedshiftFitter):
        return templates
    root = resolve_templates(templates)
    key = (str(root.resolve()), config)
    if key not in _DEFAULT_FITTERS:
        _DEFAULT_FITTERS[key] = RedshiftFitter(directory=root, config=config)
    return _DEFAULT_FITTERS[key]


def fit_redshift(spectrum: Any = None, flux: Any = None, ivar: Any = None, mask: Any = None, *,
                 wavelength: Any = None, directory: str | os.PathLike | None = None,
                 config: ScanConfig | None = None) -> RedshiftResult:
    """Fit one spectrum with the cached fitter of ``directory`` and ``config`` (:func:`fitter_for`)."""
    return fitter_for(directory, config).fit(spectrum, flux, ivar, mask, wavelength=wavelength)
