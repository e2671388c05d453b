"""The template fit of :mod:`omnispectra.redshift` for many spectra at once, in torch.

:meth:`RedshiftFitter.fit_many <omnispectra.redshift.RedshiftFitter.fit_many>` calls
:func:`fit_many`; it returns the :class:`~omnispectra.redshift.RedshiftResult` that
:meth:`~omnispectra.redshift.RedshiftFitter.fit` gives each spectrum, computed the same way
(the same coarse normal equations, minima, refinement grid, parabola and flags; the steps
that are not arithmetic are the very functions of :mod:`omnispectra.redshift`), but:

* **Coarse scan.** Spectra are sorted by where their valid pixels fall on the global coarse
  grid (``10**(j * dloglam)``) and taken ``batch_size`` at a time; a batch shares one
  observed frame (the union of its spectra's coarse ranges; SDSS/BOSS/eBOSS, LAMOST, 6dFGS
  and DESI spectra of one survey differ there by an integer pixel offset), so every spectrum
  of the batch scans a template at the same lags. The rest-frame side (products of template
  rows, cut to the window that can meet the frame at a scanned lag, widened to whole
  :data:`FFT_BLOCK` pixels so that neighbouring frames share it) is Fourier transformed once
  per template, window and FFT length and cached (:data:`FFT_CACHE_BYTES`, least recently
  used dropped first); each distinct observed-frame vector (``ivar``,
  ``ivar * flux``, times IGM transmission and Legendre rows) is transformed once per batch
  and shared by every normal-equation entry and template that uses it. One ``irfft`` per
  template gives all entries of all spectra at all lags, and one batched Cholesky solve the
  chi-square. The FFT length is the shortest free of wrap-around at the scanned lags,
  rounded up to whole blocks (about half of the per-spectrum fitter's). Entries whose
  rest-frame side is the template's coverage (products of Legendre rows, the flux and pixel
  sums: 29 of 79 for the galaxy basis) are sliding sums over the template's length, the
  difference of two cumulative sums of the observed side (made once per batch), with no
  transform.
* **Refinement.** Every trial redshift of every chosen minimum of every spectrum of the batch
  is one row of a batched weighted least-squares fit per template (fine basis bin-averaged
  over each spectrum's pixels by a batched interpolation of its cumulative integral,
  Legendre rows, IGM; pixels by basis rows, with the weighted flux as a last column so one
  product gives the normal equations and their right-hand side), solved by the scaled normal
  equations (by SVD where they are ill-conditioned, :data:`NORMAL_COND_MAX`); the chi-square
  is summed from the residuals. The fits at the parabola minima, whose coefficients are
  reported, are solved by SVD as the per-spectrum fitter does.

On CUDA, kernel launches per batch depend on the number of templates and basis rows, not on
the batch size. On CPU the batch is cut for the caches instead (launches there cost little and
memory bandwidth is the limit): the coarse scan runs :data:`COARSE_SPECTRA` spectra at a time and
the refinement in chunks of points whose design matrices hold :data:`REFINE_BYTES` (profiled on
SDSS spectra with the bundled templates: whole batches of 16 were 2-3x slower per spectrum than
one spectrum at a time; the chunked fit is faster than either).

Everything runs in float64 on ``device`` (CPU or CUDA). Python loops over
spectra remain only where the inputs are read and cleaned and where each spectrum's few
candidates are chosen and flagged (:func:`omnispectra.redshift.choose_minima`,
:func:`~omnispectra.redshift.parabola_minimum`, :func:`~omnispectra.redshift.assemble_result`).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import fft as sp_fft

from .exceptions import ConfigError, SpectrumTypeError
from .redshift import (
    PreparedTemplate,
    RedshiftFitter,
    RedshiftResult,
    assemble_result,
    choose_minima,
    coarse_frame,
    finish_result,
    fit_arrays,
    igm_transmission,
    local_minima,
    normal_terms,
    observed_legendre,
    observed_row,
    parabola_minimum,
    refine_grid,
    refined_solution,
    scan_shifts,
    unfittable,
)
from .spectrum import SpectrumData, spectrum_data
from .templates.igm import LYA_REST
from .templates.resample import pixel_edges

__all__ = ["fit_many", "BatchTemplates", "REFINE_BYTES", "COARSE_SPECTRA", "FFT_CACHE_BYTES",
           "FFT_BLOCK", "NORMAL_COND_MAX"]

logger = logging.getLogger(__name__)

_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

#: Bytes of one refinement chunk's design matrix on CPU: (points, pixels, basis rows) float64
#: tensors larger than the caches make the batched fit slower than one spectrum at a time
#: (4 MB measured best of 0.25-16 MB on 16 SDSS spectra: 7% faster than 1 MB).
REFINE_BYTES = 1 << 22

#: Bytes of rest-frame template FFTs a :class:`BatchTemplates` keeps, least recently used
#: dropped first (one entry per template, window and FFT length: a few MB each; a count bound
#: let a multi-survey corpus reach GBs, and a larger bound raised the full row's peak memory
#: with no gain in speed on mixed corpora).
FFT_CACHE_BYTES = 1 << 26

#: Pixels to which the coarse scan rounds the rest-frame window and FFT length, so that
#: batches whose frames differ by a few pixels share one cached transform.
FFT_BLOCK = 512

#: Spectra scanned together on CPU (see :data:`REFINE_BYTES`); CUDA scans the whole batch.
COARSE_SPECTRA = 2


@dataclass
class _Spectrum:
    """One cleaned spectrum waiting in the queue (``index``: its place in the input)."""

    index: int
    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    frame: Any


class BatchTemplates:
    """Rest-frame tensors of a fitter's templates on one device, made once and reused.

    ``terms(k)`` are the normal-equation terms of template ``k`` with their scatter indices;
    ``spectrum(k, a, b, n)`` the FFT (length ``n``) of its rest-frame rows cut to ``[a, b)``.
    """

    def __init__(self, fitter: RedshiftFitter, device: torch.device) -> None:
        self.fitter, self.device = fitter, device
        self.n_poly = fitter.config.n_poly
        self._terms: dict[int, dict[str, Any]] = {}
        self._fft: dict[tuple, torch.Tensor] = {}
        self._fft_bytes = 0
        # per fine pixel j: its edges (L, 2) and its cumulative integral at the lower edge with the
        # step to the upper one (L, 2 n_b), so that one gather gives all a pixel's rows
        self.fine = [(torch.as_tensor(p.fine_edges, device=device),
                      torch.as_tensor(np.stack([p.fine_edges[:-1], p.fine_edges[1:]], 1), device=device),
                      torch.as_tensor(np.ascontiguousarray(np.concatenate(
                          [p.fine_cum[:, :-1], np.diff(p.fine_cum, axis=1)]).T), device=device))
                     for p in fitter.prepared]

    def terms(self, k: int) -> dict[str, Any]:
        if k not in self._terms:
            p = self.fitter.prepared[k]
            terms = normal_terms(p, self.n_poly)
            terms += [("ff", 0, 0, ("wff",), p.coverage), ("cov", 0, 0, ("counts",), p.coverage)]
            # terms whose rest-frame vector is the template's coverage (all ones: the Legendre
            # rows' products, the flux and pixel sums) are sliding sums, taken from cumulative
            # sums of the observed side; the others are correlated by FFT (listed first)
            box = [bool(np.all(t[4] == 1.0)) for t in terms]
            terms = [t for t, b in zip(terms, box, strict=True) if not b] + [
                t for t, b in zip(terms, box, strict=True) if b]
            n_fft = len(terms) - sum(box)
            keys = sorted({t[3] for t in terms[:n_fft]}, key=str)
            n = p.coarse_red.shape[0] + self.n_poly
            m_cols = [i for i, t in enumerate(terms) if t[0] == "M"]
            m_cols_t = [i for i in m_cols if terms[i][1] != terms[i][2]]
            self._terms[k] = {
                "rows": np.array([t[4] for t in terms[:n_fft]]), "n_rest": p.coverage.size, "keys": keys,
                "key_of": torch.tensor([keys.index(t[3]) for t in terms[:n_fft]], device=self.device),
                "box_keys": [t[3] for t in terms[n_fft:]], "n": n,
                "m_cols": torch.tensor(m_cols + m_cols_t, device=self.device),
                "m_flat": torch.tensor([terms[i][1] * n + terms[i][2] for i in m_cols]
                                       + [terms[i][2] * n + terms[i][1] for i in m_cols_t],
                                       device=self.device),
                "y_cols": torch.tensor([i for i, t in enumerate(terms) if t[0] == "y"], device=self.device),
                "y_at": torch.tensor([t[1] for t in terms if t[0] == "y"], device=self.device),
                "ff": next(i for i, t in enumerate(terms) if t[0] == "ff"),
                "cov": next(i for i, t in enumerate(terms) if t[0] == "cov")}
        return self._terms[k]

    def spectrum(self, k: int, a: int, b: int, n: int) -> torch.Tensor:
        key = (k, a, b, n)
        if key in self._fft:
            self._fft[key] = self._fft.pop(key)                 # most recently used last
            return self._fft[key]
        rows = torch.as_tensor(self.terms(k)["rows"][:, a:b], device=self.device)
        spectrum = torch.conj(torch.fft.rfft(rows, n))
        self._fft_bytes += spectrum.numel() * spectrum.element_size()
        self._fft[key] = spectrum
        while self._fft_bytes > FFT_CACHE_BYTES and len(self._fft) > 1:
            old = self._fft.pop(next(iter(self._fft)))
            self._fft_bytes -= old.numel() * old.element_size()
        return spectrum


def batch_templates(fitter: RedshiftFitter, device: torch.device) -> BatchTemplates:
    """The cached :class:`BatchTemplates` of ``fitter`` on ``device``."""
    per_device = _CACHES.setdefault(fitter, {})
    if device not in per_device:
        per_device[device] = BatchTemplates(fitter, device)
    return per_device[device]


def _data(item: Any) -> SpectrumData:
    """The arrays of one input item (spectrum, SpectrumData or a tuple of arrays)."""
    if isinstance(item, SpectrumData):
        return item
    if isinstance(item, tuple | list):
        if not 2 <= len(item) <= 4:
            raise SpectrumTypeError(
                f"a spectrum tuple is (wavelength, flux[, ivar[, mask]]), got {len(item)} items")
        return spectrum_data(*item)
    return spectrum_data(item)


def fit_many(fitter: RedshiftFitter, spectra: Sequence[Any], *, spectype: str | None = None,
             device: Any = None, batch_size: int = 32, chunked: bool | None = None) -> list[RedshiftResult]:
    """Fit many spectra with ``fitter``'s templates and settings, in batches (module docstring).

    Parameters
    ----------
    fitter : RedshiftFitter
    spectra : sequence
        Each a specutils spectrum, a :class:`~omnispectra.spectrum.SpectrumData` or a tuple
        ``(wavelength, flux[, ivar[, mask]])`` (Angstrom, mask True = bad).
    spectype : str, optional
        As in :meth:`RedshiftFitter.fit <omnispectra.redshift.RedshiftFitter.fit>`.
    device : str or torch.device, optional
        Where the arithmetic runs (default CPU).
    batch_size : int
        Spectra fitted together; memory grows with it (about 15 MB per spectrum).
    chunked : bool, optional
        Cut each batch for the CPU caches (:data:`COARSE_SPECTRA`, :data:`REFINE_BYTES`);
        default: on CPU. False runs the accelerator's layout (whole batches) on any device:
        the same results, with torch calls per batch that do not grow with its size.

    Returns
    -------
    list of RedshiftResult
        In the order of ``spectra``.

    Raises
    ------
    ConfigError
        ``batch_size`` below 1.
    InvalidSpectrumError, SpectrumTypeError
        An item that is not a spectrum (from :func:`~omnispectra.spectrum.spectrum_data`).
    """
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    cfg = fitter.config
    device = torch.device(device if device is not None else "cpu")
    chunked = device.type == "cpu" if chunked is None else bool(chunked)
    cache = batch_templates(fitter, device)
    results: list[RedshiftResult | None] = [None] * len(spectra)
    queue = []
    for i, item in enumerate(spectra):
        wave, flux, ivar = fit_arrays(_data(item), cfg)
        results[i] = unfittable(wave, ivar)
        if results[i] is None:
            queue.append(_Spectrum(i, wave, flux, ivar, coarse_frame(wave, ivar, cfg.dloglam)))
    queue.sort(key=lambda s: (s.frame.j0, s.frame.n_obs))
    for start in range(0, len(queue), int(batch_size)):
        batch = queue[start:start + int(batch_size)]
        # the coarse scan's (terms, spectra, frequencies) tensors outgrow a CPU's caches fast
        step = COARSE_SPECTRA if chunked else len(batch)
        minima = [m for at in range(0, len(batch), step) for m in coarse_minima(cache, batch[at:at + step])]
        refined = refine(cache, batch, minima, chunked)
        for s, solutions in zip(batch, refined, strict=True):
            result = assemble_result(solutions, int((s.ivar > 0).sum()), spectype, cfg)
            finish_result(result, s.wave, s.flux, s.ivar, cfg)
            results[s.index] = result
    logger.debug("fitted %d spectra in batches of %d on %s", len(spectra), batch_size, device)
    return results


# ---------------------------------------------------------------------- coarse scan
def _legendre_t(x: torch.Tensor, n: int) -> torch.Tensor:
    """Legendre rows P_0..P_{n-1} at ``x`` (the recurrence numpy's ``legvander`` uses), (n, *x.shape)."""
    rows = [torch.ones_like(x), x][:n]
    for k in range(1, n - 1):
        rows.append((rows[k] * x * (2 * k + 1) - rows[k - 1] * k) / (k + 1))
    return torch.stack(rows)


def observed_frame(batch: list[_Spectrum], n_poly: int, device: torch.device) -> dict[str, Any]:
    """The batch's observed-frame vectors on one shared coarse frame: ``w``, ``wf``, ``wff``,
    ``counts`` (B, N), Legendre rows over each spectrum's own range (n_poly, B, N) and the IGM
    transmission ``g`` (N,)."""
    d = batch[0].frame.dloglam
    j_lo = min(s.frame.j0 for s in batch)
    n_frame = max(s.frame.j0 + s.frame.n_obs for s in batch) - j_lo
    flat = np.concatenate([k * n_frame + s.frame.j0 - j_lo + s.frame.index for k, s in enumerate(batch)])
    values = {"w": [s.ivar[s.frame.valid] for s in batch],
              "wf": [(s.ivar * s.flux)[s.frame.valid] for s in batch],
              "wff": [(s.ivar * s.flux ** 2)[s.frame.valid] for s in batch],
              "counts": [np.ones(s.frame.index.size) for s in batch]}
    out = {name: torch.as_tensor(np.bincount(flat, weights=np.concatenate(v), minlength=len(batch) * n_frame),
                                 device=device).reshape(len(batch), n_frame) for name, v in values.items()}
    j = torch.arange(n_frame, dtype=torch.float64, device=device)
    j0 = torch.tensor([s.frame.j0 - j_lo for s in batch], dtype=torch.float64, device=device)
    span = torch.tensor([max(s.frame.n_obs - 1, 1) for s in batch], dtype=torch.float64, device=device)
    x = -1.0 + 2.0 * (j[None, :] - j0[:, None]) / span[:, None]
    out["poly"] = _legendre_t(x, n_poly)
    out["g"] = torch.as_tensor(igm_transmission(10 ** ((j_lo + np.arange(n_frame)) * d)), device=device)
    out["j_lo"], out["n_frame"] = j_lo, n_frame
    return out


def _correlations(cache: BatchTemplates, k: int, obs: dict[str, Any], lags: np.ndarray,
                  obs_fft: dict[tuple, torch.Tensor]) -> torch.Tensor:
    """``c[t, b, l] = sum_i obs_t[b, i + lags[l]] * rest_t[i]`` for every term ``t`` of template
    ``k`` and spectrum ``b``: by FFT of the shortest length free of wrap-around at these lags,
    and for a rest vector of ones (:meth:`BatchTemplates.terms`) as the difference of two
    cumulative sums. ``obs_fft`` keeps the batch's observed-side transforms and sums."""
    info = cache.terms(k)
    n_rest, n_frame = info["n_rest"], obs["n_frame"]
    k_lo, k_hi = int(lags[0]), int(lags[-1])
    # rest pixels that meet the frame at some scanned lag
    a = min(max(0, -k_hi), n_rest - 1)
    b = max(min(n_rest, n_frame - k_lo), a + 1)
    # widened to whole blocks (the extra rest pixels meet no frame pixel at these lags, so the
    # sums are unchanged) so that batches of one survey, whose frames differ by a few pixels,
    # share the cached rest-frame transform
    a, b = a - a % FFT_BLOCK, min(n_rest, -(-b // FFT_BLOCK) * FFT_BLOCK)
    lo, hi = k_lo + a, k_hi + a
    need = max(b - a + max(hi, 0), n_frame - min(lo, 0)) + 1
    n = sp_fft.next_fast_len(-(-need // FFT_BLOCK) * FFT_BLOCK, real=True)
    rest = cache.spectrum(k, a, b, n)                                            # (T_fft, F)
    spectra = []
    for key in info["keys"]:
        if (key, n) not in obs_fft:
            obs_fft[(key, n)] = torch.fft.rfft(observed_row(obs, key, obs["g"], obs["poly"]), n)
        spectra.append(obs_fft[(key, n)])
    obs_f = torch.stack(spectra)[info["key_of"]]                                  # (T_fft, B, F)
    corr = torch.fft.irfft(obs_f * rest[:, None, :], n)                          # (T_fft, B, n)
    index = torch.as_tensor((lags + a) % n, device=corr.device)
    sums = []
    for key in info["box_keys"]:
        if (key, "sum") not in obs_fft:   # S[j] = sum of the first j observed pixels
            row = observed_row(obs, key, obs["g"], obs["poly"])
            obs_fft[(key, "sum")] = torch.nn.functional.pad(torch.cumsum(row, -1), (1, 0))
        sums.append(obs_fft[(key, "sum")])
    sums_t = torch.stack(sums)                                                   # (T_box, B, N + 1)
    lag_t = torch.as_tensor(lags, device=corr.device)
    box = (sums_t.index_select(2, torch.clamp(lag_t + n_rest, 0, n_frame))
           - sums_t.index_select(2, torch.clamp(lag_t, 0, n_frame)))             # (T_box, B, L)
    return torch.cat([corr.index_select(2, index), box])                        # (T, B, L)


def _chi2_from_normal(cache: BatchTemplates, k: int, corr: torch.Tensor, n_tot: torch.Tensor) -> tuple:
    """Coarse ``chi2`` (rescaled to all valid pixels; NaN below ``min_coverage``) and coverage,
    both (B, L), from the correlations (T, B, L) of :func:`_correlations`.

    ``chi2 = f'Wf - y' M^-1 y`` with ``M`` column-scaled (plus 1e-9 on its diagonal, as the
    per-spectrum fitter) and ``y' M^-1 y = |L^-1 y|**2`` from its Cholesky factor ``L`` (LU
    where Cholesky fails); it only chooses the minima that the refinement then fits exactly.
    """
    info, (_, n_b, n_lag) = cache.terms(k), corr.shape
    n = info["n"]
    big_m = corr.new_zeros(n * n, n_b, n_lag)
    big_m.index_add_(0, info["m_flat"], corr.index_select(0, info["m_cols"]))
    big_m = big_m.permute(1, 2, 0).reshape(n_b, n_lag, n, n)
    y = corr.new_zeros(n, n_b, n_lag).index_add_(0, info["y_at"], corr.index_select(0, info["y_cols"]))
    cover = torch.clamp(corr[info["cov"]] / n_tot[:, None], 0.0, 1.0)
    diag = torch.diagonal(big_m, dim1=-2, dim2=-1)
    inv = 1.0 / torch.sqrt(torch.where(diag > 0, diag, torch.ones_like(diag)))    # (B, L, n)
    ms = big_m * (inv[..., :, None] * inv[..., None, :])
    ms.diagonal(dim1=-2, dim2=-1).add_(1e-9)
    ys = y.permute(1, 2, 0) * inv
    chol, bad = torch.linalg.cholesky_ex(ms)
    fitted = (torch.linalg.solve_triangular(chol, ys[..., None], upper=False)[..., 0] ** 2).sum(-1)
    bad = bad != 0
    if bool(bad.any()):
        fitted[bad] = (ys[bad] * torch.linalg.solve(ms[bad], ys[bad][..., None])[..., 0]).sum(-1)
    chi2 = corr[info["ff"]] - fitted
    ok = cover >= cache.fitter.config.min_coverage
    chi2 = torch.where(ok, chi2 / torch.clamp(cover, min=1e-12), torch.full_like(chi2, float("nan")))
    return chi2, cover


def coarse_minima(cache: BatchTemplates, batch: list[_Spectrum]) -> list[list[tuple]]:
    """Every spectrum's coarse minima over all templates (:func:`omnispectra.redshift.local_minima`)."""
    cfg = cache.fitter.config
    obs = observed_frame(batch, cfg.n_poly, cache.device)
    n_tot = obs["counts"].sum(1)
    obs_fft: dict[tuple, torch.Tensor] = {}
    minima: list[list[tuple]] = [[] for _ in batch]
    for k, p in enumerate(cache.fitter.prepared):
        shifts = scan_shifts(p, cfg.dloglam, cfg.coarse_stride)
        corr = _correlations(cache, k, obs, shifts + p.i0 - obs["j_lo"], obs_fft)
        chi2, _ = _chi2_from_normal(cache, k, corr, n_tot)
        z = 10 ** (shifts * cfg.dloglam) - 1.0
        for found, row in zip(minima, chi2.cpu().numpy(), strict=True):
            found += local_minima(p, z, row, 3 * cfg.n_refine)
    return minima


# ---------------------------------------------------------------------- refinement
def pixel_data(batch: list[_Spectrum], n_poly: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The batch's own pixels, padded to the longest (padding has ``ivar = 0``): ``wave``,
    ``edges`` and their ``log_edges`` (log10), ``flux``, ``ivar``, IGM transmission ``g`` (B, M),
    Legendre rows (B, M, n_poly), pixels last so that a design matrix is (M, n) row-major."""
    m = max(s.wave.size for s in batch)

    def pad(values: list[np.ndarray], extra: int = 0, fill: str = "zero") -> torch.Tensor:
        out = np.zeros((len(values), m + extra))
        for i, v in enumerate(values):
            out[i, :v.size] = v
            if fill == "ramp" and v.size < m + extra:  # strictly increasing past the end
                out[i, v.size:] = v[-1] + np.arange(1, m + extra - v.size + 1)
        return torch.as_tensor(out, device=device)

    poly = np.zeros((len(batch), m, n_poly))
    for i, s in enumerate(batch):
        poly[i, :s.wave.size] = observed_legendre(s.wave, n_poly).T
    edges = pad([pixel_edges(s.wave) for s in batch], 1, fill="ramp")
    return {"wave": pad([s.wave for s in batch], fill="ramp"), "edges": edges,
            "log_edges": torch.log10(edges),
            "flux": pad([s.flux for s in batch]), "ivar": pad([s.ivar for s in batch]),
            "g": pad([igm_transmission(s.wave) for s in batch]), "poly": torch.as_tensor(poly, device=device),
            "n_valid": torch.tensor([int((s.ivar > 0).sum()) for s in batch], device=device)}


def _take(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for an index of any shape (rows of ``table``), by one ``index_select``
    (on CPU several times faster than advanced indexing)."""
    return table.index_select(0, index.reshape(-1)).reshape(*index.shape, *table.shape[1:])


def _fine_models(cache: BatchTemplates, k: int, pix: dict[str, torch.Tensor], rows: torch.Tensor,
                 z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Template ``k``'s fine basis bin-averaged over spectrum ``rows[i]``'s pixels at ``z[i]``
    (K, M, n_b), the factor (K, M) it takes on each pixel (0 where not covered, the IGM
    transmission of a quasar's rest frame blue of Lyman-alpha, else 1) and the covered pixels."""
    f_edges, pair, table = cache.fine[k]                                # (L + 1,), (L, 2), (L, 2 n_b)
    p = cache.fitter.prepared[k]
    rest = _take(pix["edges"], rows) / (1.0 + z)[:, None]                        # (K, M + 1)
    x = torch.clamp(rest, f_edges[0], f_edges[-1])
    # np.interp on the cumulative integral (clamped at the ends, linear inside); the fine
    # pixels are uniform in log10, so the bracketing edge is guessed from the logarithm of the
    # observed edges (computed once per batch) and corrected by one where rounding put it on
    # the wrong side: the exact bracket, with no searchsorted pass and no logarithm per point
    last = f_edges.numel() - 2
    log_rest = _take(pix["log_edges"], rows) - torch.log10(1.0 + z)[:, None]
    pos = torch.clamp(torch.floor((log_rest - p.template.loglam0) / p.template.dloglam + 0.5).long(), 0, last)
    near = _take(pair, pos)                                                      # (K, M + 1, 2)
    pos = torch.clamp(pos - (x < near[..., 0]).long() + (x >= near[..., 1]).long(), 0, last)
    near = _take(pair, pos)
    frac = (x - near[..., 0]) / (near[..., 1] - near[..., 0])
    cum = _take(table, pos)                                                      # (K, M + 1, 2 n_b)
    n_b = table.shape[1] // 2
    at = torch.addcmul(cum[..., :n_b], frac[..., None], cum[..., n_b:])
    model = torch.diff(at, dim=1) / torch.diff(rest, dim=1)[..., None]          # (K, M, n_b)
    inside = (rest[:, :-1] >= f_edges[0]) & (rest[:, 1:] <= f_edges[-1])
    covered = inside & (_take(pix["ivar"], rows) > 0)
    factor = covered.to(model.dtype)
    if p.igm:
        blue = _take(pix["wave"], rows) / (1.0 + z)[:, None] < LYA_REST
        factor = factor * torch.where(blue, _take(pix["g"], rows), torch.ones_like(z)[:, None])
    return model, factor, covered


#: Largest condition number of the column-scaled normal equations a refinement-grid point is
#: solved by (else by SVD): below it the chi-square from the residuals agrees with the SVD's to
#: far better than 1e-10 (the excess is second order in the solve's error, about
#: ``(n eps)**2 * cond`` of the model power). Real SDSS spectra with the bundled templates reach
#: 6e6; a smooth basis row nearly a Legendre polynomial can pass 1e15, where the normal
#: equations lose the chi-square's digits.
NORMAL_COND_MAX = 1e9


def _solve(aug: torch.Tensor, exact: bool) -> torch.Tensor:
    """Coefficients (K, n) minimizing ``|t - D @ coef|**2`` for ``aug = [D, t]`` (K, M, n + 1).

    ``exact`` (on CPU): LAPACK ``gelsd`` (SVD), as :func:`numpy.linalg.lstsq` in the
    per-spectrum fitter, for the coefficients a result reports. Otherwise (the refinement
    grid, whose chi-square alone is used; and CUDA, which has no batched SVD least squares in
    torch) the column-scaled normal equations (exact zero columns kept out; one product gives
    them and the right-hand side); on CPU a system whose condition exceeds
    :data:`NORMAL_COND_MAX` (or that LU finds singular) is solved by ``gelsd`` instead.
    """
    design, target = aug[..., :-1], aug[..., -1:]
    cpu = aug.device.type == "cpu"
    if exact and cpu:
        return torch.linalg.lstsq(design, target, driver="gelsd").solution[..., 0]
    both = aug.mT @ aug                                                         # (K, n + 1, n + 1)
    gram = both[:, :-1, :-1]
    diag = torch.diagonal(gram, dim1=-2, dim2=-1)
    scale = torch.sqrt(torch.where(diag > 0, diag, torch.ones_like(diag)))
    scaled = gram / scale[:, :, None] / scale[:, None, :] + torch.diag_embed((diag <= 0).to(gram.dtype))
    coef, info = torch.linalg.solve_ex(scaled, both[:, :-1, -1] / scale)
    coef = coef / scale
    if not cpu:
        return coef
    eig = torch.linalg.eigvalsh(scaled)
    bad = (info != 0) | ~torch.isfinite(coef).all(-1) | ~(eig[:, 0] * NORMAL_COND_MAX > eig[:, -1])
    if bool(bad.any()):
        coef[bad] = torch.linalg.lstsq(design[bad], target[bad], driver="gelsd").solution[..., 0]
    return coef


def fit_points(cache: BatchTemplates, k: int, pix: dict[str, torch.Tensor], rows: np.ndarray,
               z: np.ndarray, with_model: bool = False) -> dict[str, torch.Tensor]:
    """Weighted least squares of template ``k`` on spectrum ``rows[i]`` at ``z[i]`` for all ``i``
    at once: ``chi2`` (rescaled to all valid pixels; inf with too little coverage), ``coef``,
    ``covered`` and with ``with_model`` the fitted ``model`` (as :meth:`RedshiftFitter._fit_at`;
    only then are the coefficients the exact least-squares ones, :func:`_solve`)."""
    cfg = cache.fitter.config
    rows_t = torch.as_tensor(rows, device=cache.device)
    z_t = torch.as_tensor(z, dtype=torch.float64, device=cache.device)
    model, factor, covered = _fine_models(cache, k, pix, rows_t, z_t)           # (K, M, n_b)
    sw = torch.sqrt(_take(pix["ivar"], rows_t) * covered)                        # (K, M)
    poly = _take(pix["poly"], rows_t)                                            # (K, M, n_poly)
    n_b, n = model.shape[2], model.shape[2] + poly.shape[2]
    aug = model.new_empty(*model.shape[:2], n + 1)                              # (K, M, n + 1): [D, t]
    torch.mul(model, (factor * sw)[..., None], out=aug[..., :n_b])
    torch.mul(poly, sw[..., None], out=aug[..., n_b:n])
    torch.mul(_take(pix["flux"], rows_t), sw, out=aug[..., n])
    coef = _solve(aug, exact=with_model)
    # chi2 from the residuals, not f'Wf - rhs'coef: with near-degenerate bases (a smooth
    # continuum and the Legendre rows) the normal equations lose digits that the residuals keep
    resid = (aug @ torch.cat([-coef, torch.ones_like(coef[:, :1])], 1)[..., None])[..., 0]
    n_cov = covered.sum(1)
    n_valid = _take(pix["n_valid"], rows_t)
    chi2 = (resid ** 2).sum(1) * n_valid / n_cov.clamp(min=1)
    enough = n_cov >= torch.clamp(cfg.min_coverage * n_valid, min=10.0)
    out = {"chi2": torch.where(enough, chi2, torch.full_like(chi2, float("inf"))), "coef": coef,
           "covered": covered}
    if with_model:
        raw = torch.cat([model * factor[..., None], poly], 2)
        out["model"] = (raw @ coef[..., None])[..., 0]
    return out


def fit_points_chunked(cache: BatchTemplates, k: int, pix: dict[str, torch.Tensor], rows: np.ndarray,
                       z: np.ndarray, with_model: bool = False,
                       chunked: bool = True) -> dict[str, torch.Tensor]:
    """:func:`fit_points` in chunks of points whose design matrices fit in a CPU cache
    (:data:`REFINE_BYTES`); one call without ``chunked`` (CUDA, where bandwidth is not the limit)."""
    n_rows = cache.fitter.prepared[k].fine_cum.shape[0] + cache.n_poly
    size = max(1, REFINE_BYTES // (8 * n_rows * pix["flux"].shape[1]))
    if not chunked or len(rows) <= size:
        return fit_points(cache, k, pix, rows, z, with_model)
    parts = [fit_points(cache, k, pix, rows[i:i + size], z[i:i + size], with_model)
             for i in range(0, len(rows), size)]
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


def _grouped(cache: BatchTemplates, pix: dict[str, torch.Tensor],
             points: list[tuple[int, PreparedTemplate, float]], with_model: bool = False,
             chunked: bool = True) -> list[tuple]:
    """:func:`fit_points` over ``(spectrum row, template, z)`` points of any templates, one call
    per template; per point ``(chi2, coef, model, covered)`` as numpy (None without a fit)."""
    index = {id(p): k for k, p in enumerate(cache.fitter.prepared)}
    out: list[tuple] = [None] * len(points)
    by_template: dict[int, list[int]] = {}
    for i, (_, p, _) in enumerate(points):
        by_template.setdefault(index[id(p)], []).append(i)
    for k, members in by_template.items():
        fit = fit_points_chunked(cache, k, pix, np.array([points[i][0] for i in members]),
                                 np.array([points[i][2] for i in members]), with_model, chunked)
        chi2 = fit["chi2"].cpu().numpy()
        if not with_model:
            out_chi2 = [(float(c), None, None, None) for c in chi2]
            for j, i in enumerate(members):
                out[i] = out_chi2[j]
            continue
        coef, model, covered = (fit[name].cpu().numpy() for name in ("coef", "model", "covered"))
        for j, i in enumerate(members):
            size, ok = pix["sizes"][points[i][0]], np.isfinite(chi2[j])
            out[i] = (float(chi2[j]), coef[j] if ok else None, model[j, :size] if ok else None,
                      covered[j, :size])
    return out


def refine(cache: BatchTemplates, batch: list[_Spectrum], minima: list[list[tuple]],
           chunked: bool = True) -> list[list[tuple]]:
    """Every spectrum's refined solutions (:func:`omnispectra.redshift.refined_solution`): the
    refinement grids of all chosen minima in one batched fit per template, then the fits at the
    parabola minima in another."""
    cfg = cache.fitter.config
    pix = pixel_data(batch, cfg.n_poly, cache.device)
    pix["sizes"] = [s.wave.size for s in batch]
    chosen = [(row, p, z0, edge, refine_grid(p, z0, cfg))
              for row, found in enumerate(minima) for _, p, z0, edge in choose_minima(found, cfg)]
    points = [(row, p, float(z)) for row, p, _, _, zz in chosen for z in zz]
    fits = iter(_grouped(cache, pix, points, chunked=chunked))
    best = []
    for row, p, _, edge, zz in chosen:
        chi = np.array([next(fits)[0] for _ in zz])
        best.append((row, p, *parabola_minimum(zz, chi, p.z_range, edge)))
    finals = _grouped(cache, pix, [(row, p, z_best) for row, p, z_best, _, _ in best], with_model=True,
                      chunked=chunked)
    refined: list[list[tuple]] = [[] for _ in batch]
    for (row, p, z_best, z_err, flag), (chi2, coef, model, covered) in zip(best, finals, strict=True):
        if coef is not None:
            refined[row].append(refined_solution(p, z_best, z_err, flag, chi2, coef, model, covered,
                                                 batch[row].flux, batch[row].ivar, cfg))
    return refined
