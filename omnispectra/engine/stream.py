"""Streaming engine samples to training, and writing them into a corpus.

* :class:`EngineDataset`: a map-style torch Dataset; item ``i`` of epoch ``e`` is drawn
  from ``numpy.random.default_rng([seed, e, i])``, so it is the same in every worker,
  process and run (reproducible from ``(seed, epoch, index)``) and no two workers draw
  the same stream.
* :class:`MixedDataset`: engine spectra and *training-side* real spectra (augmented
  with :func:`~omnispectra.engine.augment.augment_real`) at a configured ratio.
* :func:`build_engine`: templates + donors read from files, training side only.
* :func:`write_engine_corpus`: ``n`` samples into an omnispectra HDF5 corpus (one file
  per ``engine_<survey>``) through :func:`omnispectra.corpus.build_corpus`.

Engine spectra made from one template set are never evidence about real data: select
models and quote numbers on real spectra only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .. import splits
from ..exceptions import OmniSpectraError
from ..templates.library import load_library
from .augment import AugmentConfig, augment_real
from .donors import donor_from_spectrum, select_side
from .generator import Engine, EngineConfig, EngineSample

__all__ = ["ENGINE_SURVEY_PREFIX", "EngineDataset", "MixedDataset", "RealPool", "build_engine",
           "engine_pair", "engine_spectrum", "is_engine_survey", "write_engine_corpus"]

logger = logging.getLogger(__name__)

#: Engine spectra written into a corpus carry the survey ``engine_<donor survey>``.
ENGINE_SURVEY_PREFIX = "engine_"


def is_engine_survey(survey: str) -> bool:
    """Whether a corpus survey name holds engine (simulated) spectra."""
    return str(survey).startswith(ENGINE_SURVEY_PREFIX)


def _rng(seed: int, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(epoch), int(index), int(stream)])


class EngineDataset(torch.utils.data.Dataset):
    """``length`` engine samples per epoch; item ``i`` is a pure function of ``(seed, epoch, i)``.

    Parameters
    ----------
    transform : callable, optional
        Applied to each :class:`EngineSample` (e.g. tokenization); default returns it.
    """

    def __init__(self, engine: Engine, length: int, seed: int = 0, epoch: int = 0,
                 transform: Callable[[EngineSample], Any] | None = None) -> None:
        self.engine, self.length, self.transform = engine, int(length), transform
        self.seed, self.epoch = int(seed), int(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < self.length:
            raise IndexError(index)
        s = self.engine.sample(_rng(self.seed, self.epoch, index))
        s.meta["id"] = s.meta["object_id"] = f"engine:{self.seed}:{self.epoch}:{index}"
        return self.transform(s) if self.transform else s


class RealPool:
    """Real labelled spectra for mixing: ``(wave, flux, ivar, mask, labels, meta)`` tuples,
    restricted to the training side of the object-hash split."""

    def __init__(self, items: Sequence[tuple], fraction: float = splits.DEFAULT_VALIDATION_FRACTION,
                 seed: int = splits.DEFAULT_SEED) -> None:
        object_ids = [it[5].get("object_id") or it[5].get("id", "") for it in items]
        val = splits.is_validation(object_ids, fraction, seed)
        self.items = [it for it, v in zip(items, val, strict=True) if not v]

    def __len__(self) -> int:
        return len(self.items)


class MixedDataset(torch.utils.data.Dataset):
    """Engine samples mixed with augmented training-side real spectra.

    Item ``i`` is real with probability ``real_fraction`` (decided by its own generator);
    a real item is an augmented copy of a spectrum of ``real`` picked at random.
    """

    def __init__(self, engine: Engine, real: RealPool, length: int, real_fraction: float = 0.2,
                 seed: int = 0, epoch: int = 0, augment: AugmentConfig | None = None,
                 transform: Callable[[EngineSample], Any] | None = None) -> None:
        if not 0.0 <= real_fraction <= 1.0:
            raise ValueError(f"real_fraction must be in [0, 1], got {real_fraction}")
        if real_fraction > 0 and len(real) == 0:
            raise OmniSpectraError("real_fraction > 0 but the real pool (training side) is empty")
        self.engine_ds = EngineDataset(engine, length, seed, epoch)
        self.real, self.real_fraction = real, float(real_fraction)
        self.augment, self.transform = augment, transform

    def set_epoch(self, epoch: int) -> None:
        self.engine_ds.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.engine_ds)

    def __getitem__(self, index: int) -> Any:
        ds = self.engine_ds
        rng = _rng(ds.seed, ds.epoch, index, stream=1)
        if rng.random() < self.real_fraction:
            wave, flux, ivar, mask, labels, meta = self.real.items[int(rng.integers(len(self.real)))]
            s = augment_real(wave, flux, ivar, mask, labels, meta, rng, ds.engine.donors, self.augment)
            s.meta["id"] = f"real:{meta.get('id', '')}:{ds.epoch}:{index}"
            s.meta["object_id"] = meta.get("object_id", "")
        else:
            s = ds[index]
        return self.transform(s) if self.transform else s


def build_engine(templates: str | os.PathLike | None, donor_sources: Any, *, side: str = "train",
                 fraction: float = splits.DEFAULT_VALIDATION_FRACTION, seed: int = splits.DEFAULT_SEED,
                 config: EngineConfig | None = None, redrock: list[str] | None = None,
                 pyhammer: list[str] | bool = True, exclude_surveys: Sequence[str] = ("apogee",)) -> Engine:
    """An :class:`Engine` from a template folder and real donor files (``side`` of the split).

    ``donor_sources`` is anything :func:`omnispectra.io.iter_spectra` takes; unreadable
    files are skipped (logged). APOGEE is excluded by default: no template covers the
    infrared.
    """
    from ..io import iter_spectra

    library = load_library(templates, redrock=redrock, pyhammer=pyhammer)
    it = iter_spectra(donor_sources, on_error="skip")
    donors = [donor_from_spectrum(s) for s in it]
    for f in it.failures:
        logger.info("donor file skipped: %s (%s)", f.path, f.error)
    donors = [d for d in donors if d.survey not in exclude_surveys and d.valid.sum() > 100]
    donors = select_side(donors, side, fraction, seed)
    engine = Engine(library, donors, config)
    engine.fit_quasars([d for d in donors if d.labels.get("class") == "QSO"])
    galaxies = [d for d in donors if d.labels.get("class") == "GALAXY"]
    engine.fit_responses(galaxies)
    engine.fit_redshift_priors(galaxies)
    return engine


def engine_spectrum(sample: EngineSample):
    """An engine sample as a :class:`specutils.Spectrum` with the reader-contract meta
    (survey ``engine_<donor survey>``, format ``engine``, labels)."""
    from astropy import units as u
    from astropy.nddata import InverseVariance
    from specutils import Spectrum

    meta = {"id": sample.meta.get("id", ""),
            "object_id": sample.meta.get("object_id", sample.meta.get("id", "")),
            "survey": f"{ENGINE_SURVEY_PREFIX}{sample.meta.get('survey', 'unknown')}", "format": "engine",
            "source_file": f"engine:{sample.meta.get('template', sample.meta.get('source_id', ''))}"
                           f"|donor:{sample.meta.get('donor_id', '')}",
            "rest_frame": False, **{k: v for k, v in sample.labels.items() if v not in (None, "")}}
    return Spectrum(spectral_axis=sample.wave * u.AA,
                    flux=sample.flux.astype(np.float32) * u.dimensionless_unscaled,
                    # float64: donors in erg units have ivar ~1e34, beyond float32
                    uncertainty=InverseVariance(np.asarray(sample.ivar, dtype=np.float64)),
                    mask=sample.mask.copy(), meta=meta)


def engine_pair(engine: Engine, seed: int, index: int, epoch: int = 0) -> list[EngineSample]:
    """Object ``index`` of ``(seed, epoch)`` observed through two donors
    (:meth:`Engine.sample_pair`): one or two samples sharing ``object_id``
    ``engine-pair:<seed>:<epoch>:<index>``, ids ending ``:a`` and ``:b``."""
    first, second = engine.sample_pair(_rng(seed, epoch, index, stream=2))
    out = [s for s in (first, second) if s is not None]
    for view, s in zip("ab", out, strict=False):
        s.meta["object_id"] = f"engine-pair:{seed}:{epoch}:{index}"
        s.meta["id"] = f"{s.meta['object_id']}:{view}"
    return out


def write_engine_corpus(engine: Engine, n: int, output: str | os.PathLike, seed: int = 0, *,
                        overwrite: bool = False, progress: bool = False, pairs: bool = False):
    """Write ``n`` engine samples (items ``0..n-1`` of epoch 0 of ``EngineDataset(seed)``)
    into HDF5 corpus files with :func:`omnispectra.corpus.build_corpus`; returns its report.

    With ``pairs``, ``n`` objects each observed through two donors (:func:`engine_pair`;
    up to ``2 n`` spectra, the two views of one object sharing its ``object_id``): the
    positive pairs of the invariance term of pretraining
    (:mod:`omnispectra.training.auxiliary`).
    """
    from ..corpus import build_corpus

    if pairs:
        spectra = [engine_spectrum(s) for i in range(n) for s in engine_pair(engine, seed, i)]
    else:
        ds = EngineDataset(engine, n, seed=seed)
        spectra = [engine_spectrum(ds[i]) for i in range(n)]
    return build_corpus(spectra, output, progress=progress, overwrite=overwrite)
