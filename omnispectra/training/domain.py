"""Build the training domain (:mod:`omnispectra.domain`) from the training spectra.

``python scripts/make_training_domain.py DATA_DIR -o omnispectra/data/training-domain.npz``
reads every spectrum of the surveys the class probe was trained on (its
``info['wavelength_support']['surveys']``), measures its shape, embeds it with the
bundled encoder and fits the labelled ones with the bundled templates, then stores per
survey grid the ranges of span and resolution, the embeddings with the 99th percentile
of their leave-own-object-out neighbour distance, and a low quantile of the template
fit's significance.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..domain import TrainingDomain, result_significance, shape_of

logger = logging.getLogger(__name__)

__all__ = ["TrainingSpectrum", "read_training_spectra", "grid_ranges", "neighbour_threshold",
           "measure_fits", "residual_threshold", "residual_provenance", "build_domain"]

#: Quantile of the neighbour distance of training spectra above which an input is out of domain.
NEIGHBOUR_QUANTILE = 0.99
#: Quantile of the fit significance of labelled training spectra below which a fit is poor.
SIGNIFICANCE_QUANTILE = 0.01
#: Quantile of the best fit's residual chi-square of labelled training spectra above which a
#: fitted row is ANOMALY (as the masked statistic's threshold, the 99th percentile).
RESIDUAL_QUANTILE = 0.99


@dataclass
class TrainingSpectrum:
    """One training spectrum's measures."""

    id: str
    survey: str
    group: str              # object (else file): neighbours of the same group do not count
    label: str              # GALAXY / QSO / STAR or ""
    spectrum: Any = field(repr=False)


def read_training_spectra(sources: Any, surveys: set[str]) -> list[TrainingSpectrum]:
    """Every spectrum of ``surveys`` in ``sources`` (files or folders), with its group and label."""
    from ..flags import CLASSES
    from ..io import iter_spectra

    out = []
    for spec in iter_spectra(sources, on_error="skip"):
        meta = spec.meta or {}
        survey = str(meta.get("survey", ""))
        if survey not in surveys:
            continue
        group = str(meta.get("object_id") or meta.get("source_file") or meta.get("id"))
        label = str(meta.get("class", "")).upper()
        label = label if label in CLASSES else ""
        out.append(TrainingSpectrum(str(meta.get("id")), survey, group, label, spec))
    return out


def grid_ranges(spectra: list[TrainingSpectrum]) -> dict[str, dict[str, float]]:
    """Per survey: the wavelength range, the shortest span, the resolution range and the
    highest median S/N (0 when none of its spectra has uncertainties: then any S/N is in)."""
    from ..spectrum import spectrum_data

    grids: dict[str, dict[str, float]] = {}
    for item in spectra:
        shape = shape_of(spectrum_data(item.spectrum))
        if not (np.isfinite(shape.pixel_resolution) and shape.span > 0):
            continue
        grid = grids.setdefault(item.survey, {"wave_min": np.inf, "wave_max": -np.inf, "span_min": np.inf,
                                              "resolution_min": np.inf, "resolution_max": -np.inf,
                                              "snr_max": 0.0, "n": 0})
        if np.isfinite(shape.snr):
            grid["snr_max"] = max(grid["snr_max"], shape.snr)
        grid["wave_min"] = min(grid["wave_min"], shape.wave_min)
        grid["wave_max"] = max(grid["wave_max"], shape.wave_max)
        grid["span_min"] = min(grid["span_min"], shape.span)
        grid["resolution_min"] = min(grid["resolution_min"], shape.pixel_resolution)
        grid["resolution_max"] = max(grid["resolution_max"], shape.pixel_resolution)
        grid["n"] += 1
    return {name: {k: float(v) for k, v in grid.items()} for name, grid in sorted(grids.items())}


def neighbour_threshold(embeddings: np.ndarray, groups: list[str], k: int,
                        quantile: float = NEIGHBOUR_QUANTILE) -> tuple[float, np.ndarray]:
    """``(threshold, distances)``: each training spectrum's mean cosine distance to its ``k``
    nearest training spectra of other groups, and their ``quantile``."""
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T
    codes = np.unique(np.asarray(groups), return_inverse=True)[1]
    similarity[codes[:, None] == codes[None, :]] = -np.inf  # itself and its own object
    nearest = -np.partition(-similarity, k - 1, axis=1)[:, :k]
    distances = (1.0 - nearest).mean(axis=1)
    return float(np.quantile(distances, quantile)), distances


def measure_fits(spectra: list[TrainingSpectrum], fitter: Any, per_survey: int) -> dict[str, np.ndarray]:
    """Fit significance and the best solution's residual chi-square (NaN where no template
    of the label's class could fit the spectrum) of up to ``per_survey`` labelled spectra of
    each survey (sorted by id)."""
    from ..spectrum import spectrum_data

    chosen: dict[str, list[TrainingSpectrum]] = defaultdict(list)
    for item in sorted((s for s in spectra if s.label), key=lambda s: s.id):
        if len(chosen[item.survey]) < per_survey:
            chosen[item.survey].append(item)
    significance, residual, labels = [], [], []
    for items in chosen.values():
        for item in items:
            result = fitter.fit_data(spectrum_data(item.spectrum))
            significance.append(result_significance(result, fitter.config.n_poly))
            residual.append(result.residual_for(item.label))   # as a row of its class would get
            labels.append(item.label)
    return {"significance": np.asarray(significance, dtype=np.float64),
            "residual": np.asarray(residual, dtype=np.float64), "label": np.asarray(labels)}


def residual_threshold(fits: dict[str, np.ndarray]) -> float | None:
    """The fitted rows' ``ANOMALY`` threshold: :data:`RESIDUAL_QUANTILE` of the finite
    residual chi-squares of :func:`measure_fits` (None without any)."""
    residual = fits["residual"][np.isfinite(fits["residual"])]
    return float(np.quantile(residual, RESIDUAL_QUANTILE)) if residual.size else None


def residual_provenance(fits: dict[str, np.ndarray]) -> dict[str, Any]:
    """What a domain's ``info`` records of :func:`residual_threshold`: its quantile and the
    number of fits it was taken over."""
    return {"residual_quantile": RESIDUAL_QUANTILE,
            "n_residual_fits": int(np.isfinite(fits["residual"]).sum())}


def build_domain(sources: Any, encoder: Any, fitter: Any, surveys: set[str], *, k: int = 5,
                 fits_per_survey: int = 60, batch_size: int = 32) -> tuple[TrainingDomain, dict[str, Any]]:
    """The :class:`~omnispectra.domain.TrainingDomain` of the training spectra, and a report."""
    from ..inference.pipeline import RunOptions, forward
    from ..probes import encoder_fingerprint

    t0 = time.perf_counter()
    spectra = read_training_spectra(sources, surveys)
    logger.info("%d training spectra of %d surveys read", len(spectra), len(surveys))
    done = forward([s.spectrum for s in spectra], encoder,
                   RunOptions(batch_size=batch_size, on_error="skip", progress=False))
    by_object = {id(s.spectrum): s for s in spectra}
    spectra = [by_object[id(item.spectrum)] for item in done.items]  # those the encoder could embed
    vectors = done.vectors
    threshold, distances = neighbour_threshold(vectors, [s.group for s in spectra], k)
    fits = measure_fits(spectra, fitter, fits_per_survey)
    finite = fits["significance"][np.isfinite(fits["significance"])]
    significance_min = float(np.quantile(finite, SIGNIFICANCE_QUANTILE)) if finite.size else 0.0
    residual_max = residual_threshold(fits)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    info = {"encoder_sha": encoder_fingerprint(encoder), "n_spectra": len(spectra), "k": k,
            "neighbour_quantile": NEIGHBOUR_QUANTILE, "significance_quantile": SIGNIFICANCE_QUANTILE,
            **residual_provenance(fits), "n_fits": int(fits["significance"].size), "surveys": sorted(surveys)}
    domain = TrainingDomain(grid_ranges(spectra), unit, threshold, k, significance_min, info, residual_max)
    report = {"distances": distances, "fits": fits, "seconds": time.perf_counter() - t0}
    return domain, report
