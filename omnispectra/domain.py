"""The training domain: what the predictors learned from, and whether an input lies in it.

A prediction is only as good as the spectra it learned from. This module measures an
input against the domain stored with the package (``omnispectra/data/training-domain.npz``,
written from the training spectra by :func:`omnispectra.training.domain.build_domain`),
so that ``flag == 0`` also means "like what the model learned":

* **Shape of the input** (:class:`InputShape`): the wavelength range of the valid pixels,
  its span, the pixel resolution ``R = lambda / dlambda`` and the median signal-to-noise
  per pixel. The domain holds, per training survey grid, the range of these over its
  training spectra; an input is inside when one grid holds it (its span at least that
  grid's shortest over :data:`DOMAIN_TOLERANCE`, its resolution within the grid's range
  widened by the same factor, and :data:`~omnispectra.flags.MIN_SUPPORT_FRACTION` of its
  range inside the grid's wavelength range) and its S/N is at most the highest of any
  training spectrum times the factor. An echelle order, a narrow high-resolution window,
  an H-band spectrum of another instrument or errors no instrument delivers fall outside.
* **The embedding**: the cosine distance of the input's embedding to its nearest
  training embeddings, against the 99th percentile of that distance for training spectra
  seen from the others (their own object and file left out). Things that are not spectra
  (a step, a sine wave, noise) land far from every training spectrum.
* **The template fit's significance** (:func:`fit_significance`): how much the best
  template lowers chi-square against a smooth (Legendre-only) model, as an F ratio, which
  does not depend on how well the errors are known. The threshold is a low quantile over
  the training spectra, so that data no template describes get
  :attr:`~omnispectra.flags.Flag.POOR_FIT`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .exceptions import CheckpointError
from .flags import MIN_SUPPORT_FRACTION, Flag

logger = logging.getLogger(__name__)

__all__ = ["DOMAIN_TOLERANCE", "DOMAIN_FILE", "InputShape", "input_shape", "pixel_resolution", "shape_of",
           "TrainingDomain",
           "load_domain",
           "training_domain", "fit_significance", "result_significance"]

#: Factor by which a grid's resolution range is widened (and its shortest span shortened)
#: before an input counts as outside it: neighbouring instruments of one survey differ by
#: this much, and engine spectra were observed through the same grids.
DOMAIN_TOLERANCE = 1.25

#: The bundled domain's file name in ``omnispectra/data``.
DOMAIN_FILE = "training-domain.npz"

#: Format tag of the domain file.
DOMAIN_FORMAT = "omnispectra-training-domain-1"


@dataclass(frozen=True)
class InputShape:
    """Where and how finely a spectrum is sampled, and how well measured (valid pixels only)."""

    wave_min: float
    wave_max: float
    pixel_resolution: float  # median lambda / dlambda between neighbouring valid pixels
    snr: float = float("nan")  # median |flux| * sqrt(ivar); NaN without uncertainties

    @property
    def span(self) -> float:
        """Wavelength span of the valid pixels in Angstrom."""
        return self.wave_max - self.wave_min


def input_shape(wavelength: np.ndarray, bad: np.ndarray, flux: np.ndarray | None = None,
                ivar: np.ndarray | None = None) -> InputShape:
    """The :class:`InputShape` of a spectrum's arrays (:class:`~omnispectra.spectrum.SpectrumData`;
    pass ``flux`` and ``ivar`` only when the spectrum has real uncertainties)."""
    good = ~np.asarray(bad, dtype=bool)
    wave = np.asarray(wavelength, dtype=np.float64)[good]
    if wave.size < 2:
        return InputShape(float("nan"), float("nan"), float("nan"))
    resolution = pixel_resolution(wave)
    snr = float("nan")
    if flux is not None and ivar is not None:
        with np.errstate(over="ignore", invalid="ignore"):
            snr = float(np.median(np.abs(np.asarray(flux)[good]) * np.sqrt(np.asarray(ivar)[good])))
    return InputShape(float(wave[0]), float(wave[-1]), resolution, snr)


def pixel_resolution(wave: np.ndarray) -> float:
    """Median ``lambda / delta lambda`` of neighbouring pixels of an increasing axis
    (non-increasing steps left out; NaN when none is left)."""
    step = np.diff(wave)
    ok = step > 0
    return float(np.median(wave[1:][ok] / step[ok])) if ok.any() else float("nan")


def shape_of(data: Any) -> InputShape:
    """:func:`input_shape` of a :class:`~omnispectra.spectrum.SpectrumData`."""
    if data.has_ivar:
        return input_shape(data.wavelength, data.bad, data.flux, data.ivar)
    return input_shape(data.wavelength, data.bad)


def fit_significance(chi2_best: float, chi2_smooth: float, n_pixels: int, n_template: int,
                     n_coefficients: int) -> float:
    """F ratio of the template model over the smooth model.

    ``((chi2_smooth - chi2_best) / n_template) / (chi2_best / (n_pixels - n_coefficients))``
    with ``n_template`` template terms among the fit's ``n_coefficients`` (template and
    polynomial): about 1 when the template only fits noise, large when it describes real
    features, and unchanged when all errors are off by one factor. NaN when it cannot be
    computed.
    """
    dof = n_pixels - n_coefficients
    if (not (np.isfinite(chi2_best) and np.isfinite(chi2_smooth)) or dof <= 0 or n_template <= 0
            or chi2_best <= 0):
        return float("nan")
    return float(((chi2_smooth - chi2_best) / n_template) / (chi2_best / dof))


def result_significance(result: Any, n_poly: int) -> float:
    """:func:`fit_significance` of a template fit (a :class:`~omnispectra.redshift.RedshiftResult`)
    against the smooth model it recorded (``smooth_chi2``, ``n_poly`` Legendre terms); NaN
    for a spectrum that was not fitted."""
    n_coef = len(result.coefficients)
    if not n_coef:
        return float("nan")
    with np.errstate(all="ignore"):  # absurd errors (ivar 1e300): NaN, then POOR_FIT
        return fit_significance(result.chi2, result.smooth_chi2, result.n_pixels, n_coef - n_poly,
                                n_coef)


class TrainingDomain:
    """The stored domain (see the module docstring); :func:`load_domain` reads it.

    Parameters
    ----------
    grids : dict
        ``{grid name: {"wave_min", "wave_max", "span_min", "resolution_min",
        "resolution_max", "snr_max", "n"}}`` over the training spectra of each survey grid.
    embeddings : ndarray (N, D)
        Unit-normalized embeddings of the training spectra (the bank).
    neighbour_threshold : float
        99th percentile of the mean cosine distance to the ``k`` nearest training
        embeddings of other objects, over the training spectra.
    k : int
        Neighbours averaged.
    significance_min : float
        The low quantile of :func:`fit_significance` over the labelled training spectra
        below which a fit is :attr:`~omnispectra.flags.Flag.POOR_FIT`.
    residual_max : float, optional
        The 99th percentile of the best fit's :func:`~omnispectra.redshift.residual_chi2`
        over the same spectra, above which a fitted row is
        :attr:`~omnispectra.flags.Flag.ANOMALY` (None: a domain file written before it
        was stored; then a fitted row's ``ANOMALY`` is never set).
    info : dict
        Provenance (encoder sha256, data, quantiles, counts).
    """

    def __init__(self, grids: dict[str, dict[str, float]], embeddings: np.ndarray, neighbour_threshold: float,
                 k: int, significance_min: float, info: dict[str, Any] | None = None,
                 residual_max: float | None = None) -> None:
        self.grids = grids
        self.embeddings = np.asarray(embeddings, dtype=np.float32)
        self.neighbour_threshold = float(neighbour_threshold)
        self.k = int(k)
        self.significance_min = float(significance_min)
        self.residual_max = None if residual_max is None else float(residual_max)
        self.info = dict(info or {})

    @property
    def snr_max(self) -> float:
        """The highest median S/N of any training spectrum (a bright spectrum of one survey is
        not out of domain because another survey's grid is fainter)."""
        return max(grid["snr_max"] for grid in self.grids.values())

    def contains_shape(self, shape: InputShape) -> bool:
        """Whether one training grid holds a spectrum of this shape."""
        if not np.isfinite(shape.pixel_resolution) or not shape.span > 0:
            return False
        if shape.snr > self.snr_max * DOMAIN_TOLERANCE:  # errors no training spectrum had
            return False
        for grid in self.grids.values():
            r_ok = (grid["resolution_min"] / DOMAIN_TOLERANCE <= shape.pixel_resolution
                    <= grid["resolution_max"] * DOMAIN_TOLERANCE)
            inside = max(0.0, min(shape.wave_max, grid["wave_max"]) - max(shape.wave_min, grid["wave_min"]))
            if (r_ok and shape.span >= grid["span_min"] / DOMAIN_TOLERANCE
                    and inside >= MIN_SUPPORT_FRACTION * shape.span):
                return True
        return False

    def shape_flags(self, shapes: list[InputShape | None]) -> np.ndarray:
        """``OUT_OF_DOMAIN`` for every shape no training grid holds (None: not measured, 0)."""
        return np.asarray([0 if s is None or self.contains_shape(s) else int(Flag.OUT_OF_DOMAIN)
                           for s in shapes], dtype=np.int64)

    def neighbour_distance(self, vectors: np.ndarray) -> np.ndarray:
        """Mean cosine distance of each embedding to its ``k`` nearest training embeddings."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if not len(vectors):
            return np.zeros(0)
        unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        similarity = unit @ self.embeddings.T
        k = min(self.k, similarity.shape[1])
        nearest = -np.partition(-similarity, k - 1, axis=1)[:, :k]
        return (1.0 - nearest).mean(axis=1).astype(np.float64)

    def embedding_flags(self, vectors: np.ndarray) -> np.ndarray:
        """``OUT_OF_DOMAIN`` where the embedding is farther from the training spectra than
        the training spectra are from each other (the 99th percentile)."""
        far = self.neighbour_distance(vectors) > self.neighbour_threshold
        return np.where(far, int(Flag.OUT_OF_DOMAIN), 0).astype(np.int64)

    def fit_flags(self, significance: np.ndarray) -> np.ndarray:
        """``POOR_FIT`` where the template fit is less significant than the stored quantile
        (NaN: no fit to judge, e.g. templates that do not cover the spectrum; the fit's own
        bits say so)."""
        sig = np.asarray(significance, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            poor = sig < self.significance_min
        return np.where(poor, int(Flag.POOR_FIT), 0).astype(np.int64)

    def save(self, path: str | os.PathLike) -> None:
        """Write the domain as an ``.npz`` of plain arrays (no pickled objects)."""
        from .fileio import atomic_write

        header = {"format": DOMAIN_FORMAT, "grids": self.grids,
                  "neighbour_threshold": self.neighbour_threshold, "k": self.k,
                  "significance_min": self.significance_min, "info": self.info}
        if self.residual_max is not None:
            header["residual_max"] = self.residual_max
        with atomic_write(Path(path)) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
                                embeddings=self.embeddings.astype(np.float16))


def _checked_grids(grids: Any, source: str) -> dict[str, dict[str, float]]:
    keys = ("wave_min", "wave_max", "span_min", "resolution_min", "resolution_max", "snr_max")
    if not isinstance(grids, dict) or not grids:
        raise CheckpointError(f"{source}: the training domain holds no grids")
    out = {}
    for name, grid in grids.items():
        try:
            out[str(name)] = {k: float(grid[k]) for k in keys}
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{source}: training-domain grid {name!r} is malformed ({err})") from err
        if not all(np.isfinite(v) for v in out[str(name)].values()):
            raise CheckpointError(f"{source}: grid {name!r} of the training domain holds a non-finite value")
    return out


def load_domain(path: str | os.PathLike | None = None) -> TrainingDomain | None:
    """The training domain of ``path`` (default: ``$OMNISPECTRA_DOMAIN`` when set, else the
    bundled one); None when no file is bundled.

    ``$OMNISPECTRA_DOMAIN`` names a domain file of your own: e.g. one written for probes you
    trained (:func:`omnispectra.training.domain.build_domain`), or the training rows of one
    cross-validation round, so that a spectrum is measured against what its probe learned.

    Raises
    ------
    CheckpointError
        The file is not a valid domain file (read without unpickling).
    """
    if path is None and os.environ.get("OMNISPECTRA_DOMAIN"):
        path = os.environ["OMNISPECTRA_DOMAIN"]
        logger.info("training domain from $OMNISPECTRA_DOMAIN: %s", path)
    if path is None:
        path = Path(str(resources.files("omnispectra") / "data" / DOMAIN_FILE))
        if not path.is_file():
            logger.warning("no training domain is bundled (%s): OUT_OF_DOMAIN and POOR_FIT are not set", path)
            return None
    source = str(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            header = json.loads(bytes(npz["header"]).decode())
            embeddings = np.asarray(npz["embeddings"], dtype=np.float32)
    except (OSError, ValueError, KeyError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{source} is not a readable training-domain file ({err})") from err
    if not isinstance(header, dict) or header.get("format") != DOMAIN_FORMAT:
        raise CheckpointError(f"{source} is not a training-domain file of format {DOMAIN_FORMAT!r}")
    try:
        values = [float(header[k]) for k in ("neighbour_threshold", "significance_min")]
        k = int(header["k"])
        residual_max = None if header.get("residual_max") is None else float(header["residual_max"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: the training domain's thresholds are malformed ({err})") from err
    if embeddings.ndim != 2 or not len(embeddings) or not np.all(np.isfinite(embeddings)) or k < 1:
        raise CheckpointError(f"{source}: the training domain's embeddings are malformed")
    if residual_max is not None and not residual_max > 0:
        raise CheckpointError(f"{source}: the training domain's residual_max={residual_max!r} "
                              "is not positive")
    return TrainingDomain(_checked_grids(header.get("grids"), source), embeddings, values[0], k, values[1],
                          header.get("info"), residual_max)


@functools.lru_cache(maxsize=1)
def training_domain() -> TrainingDomain | None:
    """The training domain of :func:`load_domain` (``$OMNISPECTRA_DOMAIN`` or the bundled
    one), loaded once per process (None when the package holds none)."""
    return load_domain()
