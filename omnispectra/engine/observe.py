"""Observing a rest-frame template through a real donor spectrum.

:func:`observe` redshifts the template (``lambda_obs = lambda_rest (1 + z)``), broadens
it *downward* to the donor's line spread (Gaussian in velocity with sigma
``sqrt(sigma_donor**2 - sigma_template**2)``, ``sigma_donor`` the median of the donor's
per-pixel sigma), bin-averages it onto the donor's wavelength grid, scales it to a
signal-to-noise drawn around the donor's own, multiplies a smooth flux-calibration tilt
and adds the donor's noise: Gaussian with the donor's ``1/sqrt(ivar)``, plus a
sky-subtraction residual proportional to the donor's ``sky`` where it has one. The
donor's mask and inverse variance are the engine spectrum's. Masked pixels (ivar = 0)
hold the noiseless model: they carry no weight anywhere.

A template is only observed where it covers the donor's whole *valid span*, from its
first to its last valid pixel (:func:`redshift_window` of
:attr:`~omnispectra.engine.donors.Donor.valid_wave`): no engine spectrum has a
coverage-shaped mask, so masks never follow class or redshift. Pixels outside that span
are masked in the donor already; where the template does not reach them they hold 0.

For surveys without flux calibration, ``response`` (the instrument's mean throughput
estimated from training-side donors,
:meth:`~omnispectra.engine.generator.Engine.fit_responses`) multiplies the model before
the signal-to-noise is set, so the engine spectrum is in counts like the donor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..exceptions import OmniSpectraError
from ..templates.library import TemplateBasis
from ..templates.resample import broaden_loglam, rebin
from .donors import Donor

__all__ = ["ObserveConfig", "CoverageError", "redshift_window", "observe", "smooth_tilt"]

#: Margin (as a wavelength factor) kept between a template's edge and the donor grid,
#: for the broadening kernel and the end pixels.
EDGE_MARGIN = 1.004


class CoverageError(OmniSpectraError):
    """The template does not cover the donor's grid at this redshift."""


@dataclass
class ObserveConfig:
    """How a template is observed (defaults are the engine's)."""

    #: Standard deviation of the Legendre coefficients (orders 1..tilt_order) of the log
    #: flux-calibration tilt over the grid: 0.1 is a ~20% end-to-end slope.
    tilt_sigma: float = 0.1
    tilt_order: int = 2
    #: Scatter (dex) of the target S/N around the donor's median S/N, and its limits.
    snr_scatter_dex: float = 0.25
    snr_min: float = 1.0
    snr_max: float = 80.0
    #: Sky-subtraction residual: up to this fraction of the donor's sky, per pixel.
    sky_residual: float = 0.02
    #: Donors with a median S/N below this get a S/N drawn log-uniformly in [2, 20].
    min_donor_snr: float = 0.5


def redshift_window(template: TemplateBasis, wave: np.ndarray) -> tuple[float, float]:
    """``(z_min, z_max)`` for which the template covers ``wave`` entirely (empty when min > max)."""
    r0, r1 = template.rest_range
    return float(wave[-1] * EDGE_MARGIN / r1 - 1.0), float(wave[0] / (EDGE_MARGIN * r0) - 1.0)


def smooth_tilt(wave: np.ndarray, rng: np.random.Generator, sigma: float, order: int) -> np.ndarray:
    """``exp(sum_k a_k P_k(x))``, x in [-1, 1] over log wavelength, a_k ~ N(0, sigma)."""
    lw = np.log(wave)
    x = 2.0 * (lw - lw[0]) / max(lw[-1] - lw[0], 1e-12) - 1.0
    coef = np.concatenate([[0.0], rng.normal(0.0, sigma, order)])
    return np.exp(np.polynomial.legendre.legval(x, coef))


def _template_slice(template: TemplateBasis, z: float, wave: np.ndarray) -> slice:
    """Template pixels whose observed wavelength is within 1% of ``wave``'s span."""
    shift = np.log10(1.0 + z)
    lo = (np.log10(wave[0] / 1.01) - shift - template.loglam0) / template.dloglam
    hi = (np.log10(wave[-1] * 1.01) - shift - template.loglam0) / template.dloglam
    return slice(max(int(np.floor(lo)), 0), min(int(np.ceil(hi)) + 1, template.n_pix))


def observe(template: TemplateBasis, rest_flux: np.ndarray, z: float, donor: Donor,
            rng: np.random.Generator, config: ObserveConfig | None = None,
            transmission=None, response: np.ndarray | None = None,
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Observe ``rest_flux`` (on ``template``'s grid) at redshift ``z`` through ``donor``.

    Parameters
    ----------
    transmission : callable, optional
        ``f(loglam_obs) -> array`` multiplied into the redshifted flux before the line
        spread (the Lyman-alpha forest of quasars).
    response : array on ``donor.wave``, optional
        Multiplicative instrument response (uncalibrated surveys), applied before the
        signal-to-noise is set.

    Returns
    -------
    flux, ivar, mask, model : arrays on ``donor.wave``
        ``model`` is the noiseless, tilted flux (for figures and tests).

    Raises
    ------
    CoverageError
        The template does not cover the donor's grid at ``z``.
    """
    cfg = config or ObserveConfig()
    valid = donor.valid
    sl = _template_slice(template, z, donor.valid_wave)
    loglam_obs = template.loglam[sl] + np.log10(1.0 + z)
    flux = np.asarray(rest_flux, dtype=np.float64)[sl]
    if transmission is not None:
        flux = flux * transmission(loglam_obs)
    extra = np.sqrt(max(donor.median_sigma_kms ** 2 - template.sigma_kms ** 2, 0.0))
    flux = broaden_loglam(flux, template.dloglam, extra)
    model = rebin(10 ** loglam_obs, flux, donor.wave) if flux.size > 1 else np.full(donor.wave.size, np.nan)
    span = slice(*np.flatnonzero(valid)[[0, -1]] + [0, 1]) if valid.any() else slice(None)
    if not np.all(np.isfinite(model[span])):
        raise CoverageError(f"{template.name} at z={z:.4f} does not cover the grid of donor {donor.id}")
    model = np.where(np.isfinite(model), model, 0.0)  # only outside the valid span
    if response is not None:
        model = model * response
    sig = np.sqrt(donor.ivar[valid])
    donor_snr = donor.snr
    if donor_snr < cfg.min_donor_snr:
        snr = 10 ** rng.uniform(np.log10(2.0), np.log10(20.0))
    else:
        snr = float(np.clip(donor_snr * 10 ** rng.normal(0.0, cfg.snr_scatter_dex), cfg.snr_min, cfg.snr_max))
    current = float(np.median(model[valid] * sig)) if valid.any() else 0.0
    if current <= 0:
        current = float(np.mean(np.abs(model[valid]) * sig)) if valid.any() else 1.0
    model = model * (snr / max(current, 1e-30))
    model = model * smooth_tilt(donor.wave, rng, cfg.tilt_sigma, cfg.tilt_order)
    noisy = model.copy()
    noise_sigma = np.zeros_like(model)
    noise_sigma[valid] = 1.0 / sig
    noisy[valid] += rng.standard_normal(int(valid.sum())) * noise_sigma[valid]
    if donor.sky is not None and cfg.sky_residual > 0:
        amp = rng.uniform(0.0, cfg.sky_residual)
        noisy[valid] += amp * np.abs(donor.sky[valid]) * rng.standard_normal(int(valid.sum()))
    return noisy, donor.ivar.copy(), donor.mask.copy(), model
