"""PyTorch datasets over HDF5 corpora, survey-weighted bucketing and the object-grouped split.

:class:`SpectrumDataset` is a map-style dataset over one or many corpus files (one per
survey, see :mod:`omnispectra.corpus`). Item ``i`` is ``(i, Sample)``: the spectrum is
read from HDF5 and tokenized on the fly, and the :class:`~omnispectra.collate.Collator`
draws its chunk mask from ``(seed, epoch, i)``::

    from torch.utils.data import DataLoader
    from omnispectra.collate import Collator, LengthBucketSampler
    from omnispectra.dataset import SpectrumDataset

    ds = SpectrumDataset(["corpus-sdss.h5", "corpus-miles.h5"])
    sampler = LengthBucketSampler(ds.token_lengths, batch_size=128)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=Collator(seed=42), num_workers=4)

Spectra the tokenizer cannot use (fewer than ``patch_size`` valid pixels) are
**dropped when the dataset is built**, from the ``n_valid`` column every corpus stores
(no pixel data is read); ``n_dropped`` tells how many. A batch therefore never fails on
an untokenizable spectrum.

HDF5 handles are opened lazily, per process: nothing is open after construction, a
DataLoader worker opens its own handle on first access, and a handle inherited
through ``fork`` is replaced (the readers check ``os.getpid()``), so ``num_workers > 0``
works with both the ``fork`` and ``spawn`` start methods.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import splits
from .collate import LengthBucketSampler, Sample
from .corpus import LABEL_COLUMNS, META_COLUMNS, CorpusReader, corpus_files
from .exceptions import CorpusError
from .tokenizer import PATCH_SIZE, STRIDE, tokenize

__all__ = [
    "SpectrumDataset",
    "WeightedLengthBucketSampler",
    "split_by_object",
    "token_counts",
    "MMUSource",
]

_STRING_LABELS = ("class", "subclass")


def token_counts(n_pixels: Any, patch_size: int = PATCH_SIZE, stride: int = STRIDE) -> np.ndarray:
    """Vectorized :func:`~omnispectra.tokenizer.n_patches` (0 for spectra shorter than a patch)."""
    n_pixels = np.asarray(n_pixels, dtype=np.int64)
    out = -(-(n_pixels - patch_size) // stride) + 1
    return np.where(n_pixels >= patch_size, out, 0)


class MMUSource:
    """Row access to a Multimodal Universe HDF5 file with the interface the dataset uses.

    Read through :func:`omnispectra.io.mmu.read_mmu` (one row per item, the file is
    opened per call, so it is fork-safe). Construction scans the whole file once (every
    row is read) to learn pixel counts, valid-pixel counts and metadata, because MMU
    files store padded rows; for repeated training, convert the files once with
    ``omnispectra corpus build`` and train on the corpus.
    """

    def __init__(self, path: os.PathLike, chunk: int = 256) -> None:
        import h5py

        from .io.mmu import read_mmu
        from .spectrum import spectrum_data

        self.path = Path(path)
        with h5py.File(self.path, "r") as h5:
            n = h5["spectrum_flux"].shape[0]
        rows, lengths, valid = [], [], []
        meta: dict[str, list] = {c: [] for c in ("id", "object_id", "survey", *LABEL_COLUMNS)}
        for start in range(0, n, chunk):
            for spec in read_mmu(self.path, rows=slice(start, min(n, start + chunk))):
                data = spectrum_data(spec)
                rows.append(int(spec.meta["row"]))
                lengths.append(data.n_pixels)
                valid.append(data.n_valid)
                for c in meta:
                    default = "" if c in ("id", "object_id", "survey", *_STRING_LABELS) else math.nan
                    meta[c].append(spec.meta.get(c, default))
        self._rows = np.asarray(rows, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self._columns = {c: np.asarray(v, dtype=str if c in ("id", "object_id", "survey", *_STRING_LABELS)
                                       else np.float64) for c, v in meta.items()}
        self._columns["n_valid"] = np.asarray(valid, dtype=np.int64)

    def __len__(self) -> int:
        return int(self._rows.size)

    def column(self, name: str) -> np.ndarray:
        if name not in self._columns:
            raise KeyError(f"column {name!r} is not available for Multimodal Universe files")
        return self._columns[name]

    def value(self, name: str, i: int) -> Any:
        return self.column(name)[i].item()

    def arrays(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        from .spectrum import spectrum_data

        data = spectrum_data(self.spectrum(i))
        return data.wavelength, data.flux.astype(np.float32), data.ivar, data.mask

    def spectrum(self, i: int):
        """Row ``i`` as the MMU reader returns it (a :class:`specutils.Spectrum`)."""
        from .io.mmu import read_mmu

        (spec,) = read_mmu(self.path, rows=[int(self._rows[i])], skip_invalid=False)
        return spec

    def close(self) -> None:
        pass


def _open_source(path: os.PathLike) -> CorpusReader | MMUSource:
    try:
        return CorpusReader(path)
    except CorpusError as err:
        try:
            import h5py

            with h5py.File(path, "r") as h5:
                is_mmu = "spectrum_flux" in h5 and "spectrum_lambda" in h5
        except OSError:
            is_mmu = False
        if is_mmu:
            return MMUSource(path)
        raise CorpusError(
            f"{err}. To train on other files, convert them first: "
            f"omnispectra corpus build {path} -o corpus.h5") from err


class SpectrumDataset(torch.utils.data.Dataset):
    """Map-style dataset of tokenized spectra from one or many corpus files.

    Parameters
    ----------
    sources : path, directory, glob or sequence of them
        Corpus files (directories contribute their ``*.h5``/``*.hdf5`` files) and/or
        Multimodal Universe HDF5 files (read row by row through :class:`MMUSource`).
    patch_size, stride : int
        Tokenizer patch size and stride (20 and 10 in the paper).
    return_index : bool
        ``__getitem__`` returns ``(i, Sample)`` (for :class:`~omnispectra.collate.Collator`)
        instead of the bare :class:`~omnispectra.collate.Sample`.
    labels : sequence of str, optional
        Label columns copied into ``Sample.labels`` (``z``, ``teff``, ``logg``,
        ``fe_h``, ``z_err``, ``class``, ``subclass``). Missing values are NaN; string
        labels are encoded as indices into :attr:`label_categories`.
    indices : sequence of int, optional
        Restrict the dataset to these rows of the concatenated corpora (row ``k`` of
        file ``j`` is ``sum(len(file_0..j-1)) + k``). Untokenizable rows are still dropped.
    min_valid_fraction : float
        Passed to :func:`~omnispectra.tokenizer.tokenize` (token validity threshold).

    Attributes
    ----------
    token_lengths : ndarray of int64
        Token count of every item (from pixel counts; no flux is read), for
        :class:`~omnispectra.collate.LengthBucketSampler`.
    pixel_lengths : ndarray of int64
    surveys : ndarray of str
        Survey of every item.
    rows : ndarray of int64
        Row of every item in the concatenated corpora (the ``indices`` space).
    n_dropped : int
        Rows dropped because they have fewer than ``patch_size`` valid pixels.
    """

    def __init__(
        self,
        sources: Any,
        patch_size: int = PATCH_SIZE,
        stride: int = STRIDE,
        return_index: bool = True,
        labels: Sequence[str] | None = None,
        indices: Sequence[int] | None = None,
        min_valid_fraction: float = 0.5,
    ) -> None:
        self.paths = corpus_files(sources)
        if not self.paths:
            raise CorpusError(f"no corpus files found in {sources!r}")
        self.readers = [_open_source(p) for p in self.paths]
        self.patch_size = int(patch_size)
        self.stride = int(stride)
        self.return_index = return_index
        self.min_valid_fraction = min_valid_fraction
        self.labels = list(labels or [])
        unknown = [c for c in self.labels if c not in META_COLUMNS]
        if unknown:
            raise ValueError(f"unknown label column(s) {unknown}; available: {', '.join(LABEL_COLUMNS)}")

        sizes = np.array([len(r) for r in self.readers], dtype=np.int64)
        self._file_starts = np.concatenate([[0], np.cumsum(sizes)])
        n_total = int(sizes.sum())
        src = np.repeat(np.arange(len(self.readers), dtype=np.int32), sizes)
        row = (np.concatenate([np.arange(n, dtype=np.int64) for n in sizes]) if n_total
               else np.zeros(0, np.int64))
        n_pix = np.concatenate([r.lengths for r in self.readers]) if n_total else np.zeros(0, np.int64)
        n_valid = self._concat("n_valid").astype(np.int64)
        survey = self._concat("survey")
        self.survey_names = sorted(set(survey.tolist()))
        code = np.searchsorted(np.asarray(self.survey_names, dtype=str), survey).astype(np.int16)

        ok = (n_valid >= self.patch_size) & (n_pix >= self.patch_size)
        rows = np.arange(n_total, dtype=np.int64)
        if indices is not None:
            rows = np.asarray(indices, dtype=np.int64).reshape(-1)
            if rows.size and (rows.min() < 0 or rows.max() >= n_total):
                raise IndexError(f"indices outside [0, {n_total})")
        self.n_dropped = int((~ok[rows]).sum())
        rows = rows[ok[rows]]
        self.rows = rows
        self._src = src[rows]
        self._row = row[rows]
        self.pixel_lengths = n_pix[rows]
        self.token_lengths = token_counts(self.pixel_lengths, self.patch_size, self.stride)
        self._survey_code = code[rows]
        self.label_categories: dict[str, list[str]] = {}
        self._labels = None
        if self.labels:
            cols = []
            for name in self.labels:
                values = self._concat(name)[rows]
                if name in _STRING_LABELS or values.dtype.kind in "US":
                    cats = sorted(set(values.tolist()) - {""})
                    self.label_categories[name] = cats
                    lookup = {c: float(k) for k, c in enumerate(cats)}
                    values = np.array([lookup.get(v, math.nan) for v in values.tolist()], dtype=np.float64)
                cols.append(np.asarray(values, dtype=np.float64))
            self._labels = np.stack(cols, axis=1)
        for reader in self.readers:  # workers open their own handles on first access
            reader.close()

    def _concat(self, name: str) -> np.ndarray:
        parts = [r.column(name) for r in self.readers]
        return np.concatenate(parts) if parts else np.zeros(0)

    def column(self, name: str) -> np.ndarray:
        """A metadata column (see :data:`omnispectra.corpus.META_COLUMNS`) for every item."""
        return self._concat(name)[self.rows]

    @property
    def surveys(self) -> np.ndarray:
        """Survey name of every item."""
        return np.asarray(self.survey_names, dtype=str)[self._survey_code]

    @property
    def object_ids(self) -> np.ndarray:
        """``object_id`` of every item (reads one metadata column)."""
        return self.column("object_id")

    def subset(self, positions: Sequence[int]) -> SpectrumDataset:
        """A dataset of the items at ``positions`` of this one (shares the readers)."""
        positions = np.asarray(positions, dtype=np.int64)
        new = copy.copy(self)
        for name in ("rows", "_src", "_row", "pixel_lengths", "token_lengths", "_survey_code"):
            setattr(new, name, getattr(self, name)[positions])
        if self._labels is not None:
            new._labels = self._labels[positions]
        new.n_dropped = 0
        return new

    def __len__(self) -> int:
        return int(self.rows.size)

    def arrays(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(wavelength, flux, ivar, mask)`` of item ``i`` as stored."""
        return self.readers[self._src[i]].arrays(self._row[i])

    def spectrum(self, i: int):
        """Item ``i`` as a :class:`specutils.Spectrum` with its uncertainty and meta (for
        functions that need the inverse variance, which tokens do not carry)."""
        return self.readers[self._src[i]].spectrum(self._row[i])

    def wavelength_ranges(self, positions: Sequence[int] | None = None) -> dict[str, Any]:
        """Range of the valid-pixel wavelengths of items ``positions`` (default all), per
        survey and overall: the ``wavelength_support`` format that models and probes
        store (:func:`omnispectra.runtime.wavelength_support`,
        :func:`omnispectra.flags.support_fraction`)."""
        rows = range(len(self)) if positions is None else [int(i) for i in positions]
        surveys = self.surveys
        ranges: dict[str, list[float]] = {}
        counts: dict[str, int] = {}
        for i in rows:
            wave, _flux, ivar, mask = self.arrays(i)
            good = wave[(ivar > 0) & ~np.asarray(mask, dtype=bool)]
            survey = str(surveys[i])
            counts[survey] = counts.get(survey, 0) + 1
            if good.size:
                lo, hi = ranges.get(survey, [np.inf, -np.inf])
                ranges[survey] = [min(lo, float(good.min())), max(hi, float(good.max()))]
        if not ranges:
            raise ValueError("no valid pixels in the selected spectra: their wavelength range is undefined")
        return {"unit": "Angstrom (vacuum), valid pixels",
                "overall": [round(min(lo for lo, _ in ranges.values()), 2),
                            round(max(hi for _, hi in ranges.values()), 2)],
                "surveys": {name: {"min": round(lo, 2), "max": round(hi, 2), "spectra": counts[name]}
                            for name, (lo, hi) in sorted(ranges.items())}}

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, Sample] | Sample:
        """Item ``key``: an index, or an ``(epoch, index)`` pair as yielded by
        ``LengthBucketSampler(with_epoch=True)``; the key is returned with the sample so
        that :class:`~omnispectra.collate.Collator` draws the mask of that epoch."""
        i = int(key[1]) if isinstance(key, tuple) else int(key)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)}")
        reader = self.readers[self._src[i]]
        row = int(self._row[i])
        wave, flux, ivar, mask = reader.arrays(row)
        sid = reader.value("id", row)
        survey = self.survey_names[self._survey_code[i]]
        tokens = tokenize(wave, flux, ivar, mask, patch_size=self.patch_size, stride=self.stride,
                          min_valid_fraction=self.min_valid_fraction,
                          meta={"id": sid, "survey": survey})
        labels = None
        if self._labels is not None:
            labels = {name: float(v) for name, v in zip(self.labels, self._labels[i], strict=True)}
        sample = Sample(tokens=tokens, labels=labels, id=sid)
        return ((key[0], i) if isinstance(key, tuple) else i, sample) if self.return_index else sample

    def __repr__(self) -> str:
        return (f"<SpectrumDataset {len(self)} spectra from {len(self.paths)} file(s), surveys "
                f"{self.survey_names}, {self.n_dropped} dropped>")


class WeightedLengthBucketSampler(LengthBucketSampler):
    """Length-bucketing batch sampler that resamples surveys with weights every epoch.

    Item ``i`` of survey ``g`` is drawn with probability proportional to
    ``weights[g]`` (1 for surveys not named; 0 leaves a survey out): weight 1 everywhere
    reproduces the natural mix, ``{"apogee": 5}`` makes APOGEE spectra five times as
    frequent. Each epoch draws ``num_samples`` items (default: the dataset size):
    survey ``g`` gets its expected share ``w_g n_g / sum_h w_h n_h`` (largest-remainder
    rounding), taken without replacement inside a survey until it is exhausted, then
    from a fresh permutation. The draw is then bucketed exactly like
    :class:`~omnispectra.collate.LengthBucketSampler` (shuffled pools sorted by length,
    batches shuffled; rank-aware, with the batch count padded to a multiple of
    ``num_replicas``). Deterministic in ``(seed, epoch)``. ``with_epoch`` and
    :meth:`skip_next` work as in :class:`~omnispectra.collate.LengthBucketSampler`.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        groups: Sequence[str],
        weights: Mapping[str, float],
        batch_size: int,
        num_samples: int | None = None,
        pool_size: int | None = None,
        drop_last: bool = False,
        seed: int = 42,
        num_replicas: int | None = None,
        rank: int | None = None,
        with_epoch: bool = False,
    ) -> None:
        super().__init__(lengths, batch_size, shuffle=True, pool_size=pool_size, drop_last=drop_last,
                         seed=seed, num_replicas=num_replicas, rank=rank, with_epoch=with_epoch)
        groups = np.asarray(groups, dtype=str)
        if groups.shape != self.lengths.shape:
            raise ValueError("groups and lengths must have the same length")
        unknown = set(weights) - set(groups.tolist())
        if unknown:
            raise ValueError(f"weights for unknown survey(s) {sorted(unknown)}; "
                             f"surveys: {sorted(set(groups.tolist()))}")
        if any(w < 0 or not math.isfinite(w) for w in weights.values()):
            raise ValueError("survey weights must be finite and >= 0")
        self.group_names = sorted(set(groups.tolist()))
        self._members = [np.flatnonzero(groups == g) for g in self.group_names]
        self.weights = {g: float(weights.get(g, 1.0)) for g in self.group_names}
        mass = np.array([self.weights[g] * len(m)
                         for g, m in zip(self.group_names, self._members, strict=True)])
        if mass.sum() <= 0:
            raise ValueError("all survey weights are zero")
        self.num_samples = int(num_samples if num_samples is not None else len(self.lengths))
        share = mass / mass.sum() * self.num_samples
        counts = np.floor(share).astype(np.int64)
        rest = self.num_samples - counts.sum()
        counts[np.argsort(-(share - counts), kind="stable")[:rest]] += 1
        self.counts = dict(zip(self.group_names, counts.tolist(), strict=True))

    def epoch_indices(self) -> np.ndarray:
        """The (unbucketed) draw of the current epoch."""
        rng = np.random.default_rng([self.seed, self.epoch])
        parts = []
        for members, g in zip(self._members, self.group_names, strict=True):
            need = self.counts[g]
            if need == 0 or members.size == 0:
                continue
            reps = -(-need // members.size)
            parts.append(np.concatenate([rng.permutation(members) for _ in range(reps)])[:need])
        drawn = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return drawn[rng.permutation(drawn.size)]


def split_by_object(
    object_ids: Sequence[str],
    surveys: Sequence[str] | None = None,
    fraction: float = 0.01,
    seed: int = 42,
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/validation split, grouped by object: the project's one
    object-hash split (:func:`omnispectra.splits.split_by_object`).

    An object goes to validation when its seeded hash (of the canonical object id, not
    the survey) is below ``fraction``, so the same object in two surveys is on one side
    and the decision never depends on row order or on the other objects. In a survey
    with two or more objects that the rule left one-sided, one object is moved so both
    sides are non-empty (``keep_both_sides``). Rows with an empty ``object_id`` count
    as objects of their own.

    The paper holds out a random 1% (``fraction=0.01``) of its 5.5M spectra; use a
    larger fraction for small corpora.

    Returns
    -------
    (train_idx, val_idx) : sorted int64 arrays of row positions
    """
    keys = np.asarray(object_ids, dtype=str)
    if surveys is not None and np.asarray(surveys).shape != keys.shape:
        raise ValueError("object_ids and surveys must have the same length")
    return splits.split_by_object(keys.tolist(), fraction, seed, surveys=surveys, keep_both_sides=True)
