"""Engine spectra made during training, not read from a fixed corpus (issue 27).

``TrainConfig.engine_stream`` (:class:`EngineStreamConfig`) builds an
:class:`~omnispectra.engine.Engine` from templates and *training-side* donors and adds
:class:`EngineStream` slots to the training set (:class:`TrainingMix`). Slot ``s`` of
epoch ``e`` is a pure function of ``(seed, e, s)``: every epoch renders new objects (new
template members, redshifts, noise, masks and calibrations), so no engine spectrum is
seen twice, and a resumed or multi-worker run draws exactly what an uninterrupted one
would. With ``pairs``, slots ``2j`` and ``2j + 1`` are the two views of object ``j``
(:func:`~omnispectra.engine.stream.engine_pair`), the positive pairs of the invariance
term; their shared ``object_id`` lets :class:`~omnispectra.training.auxiliary.PairedBatchSampler`
put both into one batch.

The length-bucketing samplers need every item's token count before it is made: each
object keeps one donor for its first view in every epoch (drawn from ``(seed, j)``), so
the first view's length is exact; a second view's donor changes with the epoch and the
slot carries the first view's length as its estimate (it only sorts batches by length).
Slots are labelled with the survey ``engine_<donor survey>`` of that fixed donor, so
``engine_fraction`` and ``survey_weights`` treat them as any engine survey.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from ..collate import Sample
from ..dataset import SpectrumDataset, token_counts
from ..engine.generator import Engine, EngineSample
from ..engine.labelled import LibraryStar
from ..engine.stream import ENGINE_SURVEY_PREFIX, engine_pair
from ..exceptions import ConfigError, OmniSpectraError
from ..tokenizer import tokenize

__all__ = ["EngineStreamConfig", "EngineStream", "TrainingMix", "stream_from_config",
           "training_side_stars"]

logger = logging.getLogger(__name__)

#: Objects kept rendered per process: both views of a pair are asked for within one batch.
_CACHED_OBJECTS = 256


@dataclass(frozen=True)
class EngineStreamConfig:
    """Where the streamed engine spectra come from (``TrainConfig.engine_stream``).

    Attributes
    ----------
    donors : list of str
        Files or folders of real spectra whose grids, noise and masks the engine borrows
        (anything :func:`omnispectra.io.iter_spectra` reads); only their training side of
        the run's object-hash split is used.
    templates : str, optional
        Template folder or compact ``.npz`` (default ``$OMNISPECTRA_TEMPLATES``).
    objects : int
        Engine objects per epoch (one slot each, two with ``pairs``).
    pairs : bool, optional
        Two views per object (default: when the invariance term is on).
    seed : int, optional
        Seed of the stream (default: the run's seed).
    stars : str, optional
        A data folder with ``miles/index.csv`` (:func:`~omnispectra.engine.labelled.miles_stars`):
        its labelled library stars on the training side of the run's split are observed
        through the donors too (:meth:`~omnispectra.engine.Engine.sample_star`), with their
        Teff, logg and [Fe/H] as labels of the auxiliary stellar head.
    star_fraction : float
        Share of the objects that are library stars (with ``stars``).
    """

    donors: tuple[str, ...]
    templates: str | None = None
    objects: int = 20_000
    pairs: bool | None = None
    seed: int | None = None
    stars: str | None = None
    star_fraction: float = 0.0

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EngineStreamConfig:
        """From ``TrainConfig.engine_stream``.

        Raises
        ------
        ConfigError
            Not a mapping, unknown names, no donors, or ``objects`` not a positive integer.
        """
        if not isinstance(values, Mapping):
            raise ConfigError(f"training setting engine_stream={values!r} must be a mapping or null")
        known = {f.name for f in fields(cls)}
        if set(values) - known:
            raise ConfigError(f"unknown engine_stream settings {sorted(set(values) - known)}; "
                              f"known: {sorted(known)}")
        donors = values.get("donors")
        if isinstance(donors, str):
            donors = [donors]
        if not donors or not all(isinstance(d, str) and d for d in donors):
            raise ConfigError("engine_stream needs 'donors': a list of files or folders of real spectra")
        objects = values.get("objects", cls.objects)
        if type(objects) is not int or objects < 1:
            raise ConfigError(f"engine_stream objects={objects!r} must be a positive integer")
        for key in ("pairs", "seed"):
            value = values.get(key)
            kind = bool if key == "pairs" else int
            if value is not None and type(value) is not kind:
                raise ConfigError(f"engine_stream {key}={value!r} must be a {kind.__name__} or null")
        for key in ("templates", "stars"):
            if values.get(key) is not None and not isinstance(values[key], str):
                raise ConfigError(f"engine_stream {key}={values[key]!r} must be a path or null")
        fraction = values.get("star_fraction", 0.0)
        if type(fraction) not in (int, float) or not 0 <= fraction <= 1 or (fraction > 0) != bool(
                values.get("stars")):
            raise ConfigError(f"engine_stream star_fraction={fraction!r} must be a number in [0, 1], "
                              "above 0 exactly when 'stars' names a data folder")
        return cls(donors=tuple(donors), templates=values.get("templates"), objects=objects,
                   pairs=values.get("pairs"), seed=values.get("seed"), stars=values.get("stars"),
                   star_fraction=float(fraction))


class EngineStream:
    """``objects`` engine objects per epoch, rendered when asked for.

    Parameters
    ----------
    engine : Engine
        Its donors must be training-side spectra (:func:`~omnispectra.engine.build_engine`).
    objects : int
        Objects per epoch.
    seed : int
        Seed of the stream.
    pairs : bool
        Two views per object (slots ``2j``, ``2j + 1``) instead of one.
    stars : list of LibraryStar, optional
        Labelled library stars (training side only); object ``j`` is one of them with
        probability ``star_fraction`` (decided once, from ``seed``), the same star in every
        epoch, observed anew each time.
    star_fraction : float
        Share of the objects that are library stars.

    Attributes
    ----------
    seconds, rendered : float, int
        Time spent rendering and spectra rendered in this process (for the cost of the
        stream against the training step).
    """

    def __init__(self, engine: Engine, objects: int, seed: int = 0, pairs: bool = False,
                 stars: Sequence[LibraryStar] | None = None, star_fraction: float = 0.0) -> None:
        if objects < 1:
            raise ValueError(f"objects must be >= 1, got {objects}")
        if not 0.0 <= star_fraction <= 1.0 or (star_fraction > 0 and not stars):
            raise ValueError(f"star_fraction {star_fraction} must be in [0, 1], and > 0 only with stars")
        self.engine, self.objects, self.seed, self.pairs = engine, int(objects), int(seed), bool(pairs)
        self.stars = list(stars or [])
        draw = np.random.default_rng([self.seed, 2])
        is_star = draw.random(self.objects) < star_fraction
        # object j -> index into stars, or -1 for a template object
        self.star_of = np.where(is_star, draw.integers(max(len(self.stars), 1), size=self.objects), -1)
        self.views = 2 if self.pairs else 1
        donors = engine.donors
        self.donor_index = np.array([np.random.default_rng([self.seed, j, 1]).integers(len(donors))
                                     for j in range(self.objects)], dtype=np.int64)
        per_object = np.array([len(d.wave) for d in donors], dtype=np.int64)[self.donor_index]
        self.pixel_lengths = np.repeat(per_object, self.views)
        object_surveys = np.array([f"{ENGINE_SURVEY_PREFIX}{donors[d].survey}" for d in self.donor_index])
        self.surveys = np.repeat(object_surveys, self.views)
        self.object_ids = np.repeat(np.array([f"engine-stream:{self.seed}:{j}" for j in range(self.objects)]),
                                    self.views)
        self.seconds, self.rendered = 0.0, 0
        self._cache: OrderedDict[tuple[int, int], list[EngineSample | None]] = OrderedDict()

    def __len__(self) -> int:
        return self.objects * self.views

    def _views(self, epoch: int, j: int) -> list[EngineSample | None]:
        key = (int(epoch), int(j))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        start = time.perf_counter()
        donor = int(self.donor_index[j])
        if self.star_of[j] >= 0:
            views = self._star_views(epoch, j, donor)
        elif self.pairs:
            try:
                first, second = self.engine.sample_pair(np.random.default_rng([self.seed, epoch, j, 2]),
                                                        donor_index=donor)
            except OmniSpectraError:  # no template covers the fixed donor: any donor will do
                first, second = (engine_pair(self.engine, self.seed, j, epoch) + [None])[:2]
            views = [first, second]
        else:
            rng = np.random.default_rng([self.seed, epoch, j, 0])
            try:
                views = [self.engine.sample(rng, donor_index=donor)]
            except OmniSpectraError:
                views = [self.engine.sample(rng)]
        self.seconds += time.perf_counter() - start
        self.rendered += sum(v is not None for v in views)
        self._cache[key] = views
        if len(self._cache) > _CACHED_OBJECTS:
            self._cache.popitem(last=False)
        return views

    def _star_views(self, epoch: int, j: int, donor: int) -> list[EngineSample | None]:
        """Library star ``star_of[j]`` observed through the object's donor (another donor if
        that one cannot observe it) and, for a pair, through a second random donor."""
        star = self.stars[int(self.star_of[j])]
        rng = np.random.default_rng([self.seed, epoch, j, 4])
        try:
            try:
                first = self.engine.sample_star(star, rng, donor_index=donor)
            except OmniSpectraError:  # CoverageError included: that donor cannot observe it
                first = self.engine.sample_star(star, rng)
        except OmniSpectraError:  # no tried donor can: the slots get fresh template objects
            return [None] * self.views
        if not self.pairs:
            return [first]
        try:
            return [first, self.engine.sample_star(star, rng)]
        except OmniSpectraError:
            return [first, None]

    def sample(self, epoch: int, slot: int) -> tuple[EngineSample, bool]:
        """Slot ``slot`` of ``epoch``, and whether it is a view of a pair.

        A view that could not be rendered (a pair's second view no other donor can observe,
        a library star no tried donor covers) is replaced by an unpaired spectrum of a
        fresh template object, so every slot gives a spectrum.
        """
        j, view = divmod(int(slot), self.views)
        sample = self._views(epoch, j)[view]
        if sample is not None:
            return sample, self.pairs
        start = time.perf_counter()
        single = self.engine.sample(np.random.default_rng([self.seed, epoch, j, 3]))
        self.seconds += time.perf_counter() - start
        self.rendered += 1
        return single, False


class TrainingMix(torch.utils.data.Dataset):
    """The training side of real corpora followed by the slots of an :class:`EngineStream`.

    Has what the samplers and collators of :class:`~omnispectra.training.SpectraDataModule`
    use: ``token_lengths``, ``surveys``, ``object_ids``, ``labels``, ``label_categories``
    (the real dataset's categories, extended by the stream's classes, surveys and objects,
    so real items keep their codes), and ``(epoch, index)`` keys in ``__getitem__``.
    """

    def __init__(self, real: SpectrumDataset, stream: EngineStream) -> None:
        self.real, self.stream = real, stream
        self.n_real = len(real)
        self.patch_size, self.stride = real.patch_size, real.stride
        self.min_valid_fraction = real.min_valid_fraction
        self.labels = list(real.labels)
        streamed = token_counts(stream.pixel_lengths, self.patch_size, self.stride)
        self.token_lengths = np.concatenate([real.token_lengths, streamed])
        self.surveys = np.concatenate([np.asarray(real.surveys, dtype=str), stream.surveys.astype(str)])
        self.object_ids = np.concatenate([np.asarray(real.object_ids, dtype=str),
                                          stream.object_ids.astype(str)])
        from ..flags import CLASSES

        extra = {"class": list(CLASSES), "survey": sorted(set(stream.surveys.tolist())),
                 "object_id": stream.object_ids[::stream.views].tolist()}
        self.label_categories: dict[str, list[str]] = {}
        self._codes: dict[str, dict[str, float]] = {}
        for name in self.labels:
            if name in real.label_categories or name in extra:
                cats = list(real.label_categories.get(name, []))
                seen = set(cats)
                cats += [c for c in extra.get(name, []) if c not in seen]
                self.label_categories[name] = cats
                self._codes[name] = {c: float(k) for k, c in enumerate(cats)}

    def __len__(self) -> int:
        return self.n_real + len(self.stream)

    def _labels(self, sample: EngineSample, survey: str, object_id: str | None) -> dict[str, float]:
        values = {**sample.labels, "survey": survey, "object_id": object_id}
        out = {}
        for name in self.labels:
            value = values.get(name)
            if name in self._codes:
                out[name] = self._codes[name].get(value, math.nan) if value else math.nan
            else:
                out[name] = math.nan if value is None or value == "" else float(value)
        return out

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, Sample]:
        epoch, i = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (0, int(key))
        if i < self.n_real:
            _key, sample = self.real[(epoch, i) if isinstance(key, tuple) else i]
            return key, sample
        slot = i - self.n_real
        if not 0 <= slot < len(self.stream):
            raise IndexError(f"index {i} out of range for a training mix of {len(self)}")
        sample, paired = self.stream.sample(epoch, slot)
        survey = str(self.stream.surveys[slot])  # the fixed donor's (a second view's may differ)
        sid = f"{self.stream.object_ids[slot]}:{epoch}:{slot % self.stream.views}"
        tokens = tokenize(sample.wave, sample.flux, sample.ivar, sample.mask, patch_size=self.patch_size,
                          stride=self.stride, min_valid_fraction=self.min_valid_fraction,
                          meta={"id": sid, "survey": survey})
        labels = self._labels(sample, survey, str(self.stream.object_ids[slot]) if paired else None)
        return key, Sample(tokens=tokens, labels=labels or None, id=sid)

    def describe(self) -> dict[str, Any]:
        """Slots and rendering cost so far (this process)."""
        s = self.stream
        return {"objects": s.objects, "slots": len(s), "pairs": s.pairs, "rendered": s.rendered,
                "render_seconds": round(s.seconds, 2)}


def stream_from_config(values: Mapping[str, Any], *, seed: int, pairs: bool, fraction: float,
                       split_seed: int) -> EngineStream:
    """An :class:`EngineStream` of ``TrainConfig.engine_stream``: the engine built from its
    templates and the training side (``fraction``, ``split_seed``) of its donors."""
    from ..engine.stream import build_engine

    config = EngineStreamConfig.from_dict(values)
    engine = build_engine(config.templates, list(config.donors), side="train", fraction=fraction,
                          seed=split_seed)
    stars = None
    if config.stars:
        from ..engine.labelled import miles_stars

        stars = training_side_stars(miles_stars(config.stars), fraction, split_seed)
    logger.info("engine stream: %d donors, %d objects per epoch%s, %d library stars (%.0f%% of the objects)",
                len(engine.donors), config.objects,
                " (two views each)" if (pairs if config.pairs is None else config.pairs) else "",
                len(stars or []), 100 * config.star_fraction)
    return EngineStream(engine, config.objects, seed if config.seed is None else config.seed,
                        pairs if config.pairs is None else config.pairs, stars, config.star_fraction)


def training_side_stars(stars: Sequence[LibraryStar], fraction: float, seed: int) -> list[LibraryStar]:
    """The stars on the training side of the object-hash split (:func:`omnispectra.splits.is_validation`
    of their ids, the ``object_id`` of their corpus rows): the stars a pretraining run may learn
    labels from, so that validation-side stars stay unseen by the harness's held-out tests."""
    from ..splits import is_validation

    held = is_validation([s.id for s in stars], fraction, seed)
    return [s for s, v in zip(stars, held, strict=True) if not v]

