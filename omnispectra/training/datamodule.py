"""Lightning data module for masked-reconstruction pretraining on HDF5 corpora.

Usage::

    import lightning as L
    from omnispectra.training import SpectraDataModule

    data = SpectraDataModule(["corpus-sdss.h5", "corpus-miles.h5"], batch_size=128,
                             num_workers=4, prefetch_factor=2, val_fraction=0.01, seed=42)
    trainer = L.Trainer(..., use_distributed_sampler=False)
    trainer.fit(module, datamodule=data)

**The Trainer needs** ``use_distributed_sampler=False``: the training batches come from
a rank-aware length-bucketing batch sampler (:class:`~omnispectra.collate.LengthBucketSampler`,
or :class:`~omnispectra.dataset.WeightedLengthBucketSampler` with ``survey_weights``)
that already gives each rank its own batches; Lightning must not replace it. The data
module reads ``world_size``/``global_rank`` from the attached trainer.

Epochs: the batch sampler is wrapped so that every iteration first sets the epoch to
``trainer.current_epoch`` (no callback needed), and it yields ``(epoch, index)`` keys,
so the chunk masks drawn inside DataLoader workers follow the epoch even with
persistent workers. Validation uses fixed, length-sorted batches and a
:class:`~omnispectra.collate.Collator` pinned to epoch 0, so validation MSE is
computed on the same masks at every check. On a mid-epoch resume the data module
(through its ``state_dict``) skips the batches the checkpointed run already consumed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from ..collate import Collator, LengthBucketSampler
from ..dataset import SpectrumDataset, WeightedLengthBucketSampler, split_by_object
from ..engine.stream import is_engine_survey
from ..masking import MASK_RATIO
from ..splits import DEFAULT_VALIDATION_FRACTION
from ..tokenizer import PATCH_SIZE, STRIDE

__all__ = ["SpectraDataModule", "mixture_weights"]


def mixture_weights(surveys: Sequence[str], survey_weights: Mapping[str, float],
                    engine_fraction: float) -> dict[str, float]:
    """Per-survey sampling weights that give engine surveys ``engine_fraction`` of the draws.

    Real surveys keep their ``survey_weights`` (1 when not named); every engine survey
    gets one common weight ``w`` chosen so that ``w * n_engine / (w * n_engine +
    sum_real w_g n_g) = engine_fraction``; inside the engine share, surveys keep their
    natural proportions. An engine survey named in ``survey_weights`` is scaled by it.

    Raises
    ------
    ValueError
        ``engine_fraction`` outside [0, 1), or > 0 with no engine (or no real) spectra.
    """
    if not 0.0 <= engine_fraction < 1.0:
        raise ValueError(f"engine_fraction must be in [0, 1), got {engine_fraction}")
    names, counts = np.unique(np.asarray(surveys, dtype=str), return_counts=True)
    engine = {n: int(c) for n, c in zip(names, counts, strict=True) if is_engine_survey(n)}
    real = {n: int(c) for n, c in zip(names, counts, strict=True) if not is_engine_survey(n)}
    real_mass = sum(float(survey_weights.get(n, 1.0)) * c for n, c in real.items())
    engine_mass = sum(float(survey_weights.get(n, 1.0)) * c for n, c in engine.items())
    weights = {n: float(survey_weights.get(n, 1.0)) for n in real}
    if engine_fraction == 0.0:
        return weights | {n: 0.0 for n in engine}
    if engine_mass <= 0 or real_mass <= 0:
        raise ValueError(f"engine_fraction {engine_fraction} needs engine and real training spectra "
                         f"(engine: {sorted(engine)}, real: {sorted(real)})")
    scale = engine_fraction / (1.0 - engine_fraction) * real_mass / engine_mass
    return weights | {n: float(survey_weights.get(n, 1.0)) * scale for n in engine}


class _TrainerEpochSampler(torch.utils.data.Sampler[list]):
    """Batch sampler wrapper: takes the epoch from the trainer at the start of each iteration.

    :meth:`resume` positions the first iteration after a restart: mid-epoch it skips the
    batches the checkpointed run consumed; after a checkpoint on an epoch's last batch
    it starts the next epoch (Lightning's ``current_epoch`` still names the finished
    epoch during that first iteration).
    """

    def __init__(self, sampler: Any, datamodule: SpectraDataModule) -> None:
        self.inner = sampler
        self.datamodule = datamodule
        self._first_epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def resume(self, epoch: int, batches_done: int) -> None:
        if batches_done >= len(self.inner):
            self._first_epoch = epoch + 1
        elif batches_done > 0:
            self._first_epoch = epoch
            self.inner.set_epoch(epoch)
            self.inner.skip_next(batches_done, epoch=epoch)

    def __iter__(self) -> Iterator[list]:
        epoch, self._first_epoch = self._first_epoch, None
        if epoch is None:
            trainer = self.datamodule._trainer_or_none()
            epoch = trainer.current_epoch if trainer is not None else self.inner.epoch
        self.inner.set_epoch(epoch)
        return iter(self.inner)

    def __len__(self) -> int:
        return len(self.inner)


class SpectraDataModule(L.LightningDataModule):
    """Training/validation data for pretraining (paper, *Self-Supervised Pretraining*).

    Parameters
    ----------
    corpus : path, directory, glob or sequence of them
        Corpus HDF5 files (one per survey; all are mixed in one run).
    batch_size : int
        Spectra per batch **per device** (128 in the paper).
    num_workers, prefetch_factor, pin_memory : DataLoader options (4 workers, prefetch 2
        in the paper; ``prefetch_factor`` is ignored when ``num_workers == 0``).
    val_fraction : float
        Fraction of objects per survey held out by :func:`~omnispectra.dataset.split_by_object`
        (1% in the paper; raise it for small corpora).
    seed : int
        Seeds the bucketing shuffle and the chunk masks (42 in the paper), and the split
        unless ``split_seed`` is given.
    mask_ratio : float
        Chunk-mask ratio gamma (0.75).
    masking : str
        Training mask scheme (:data:`~omnispectra.masking.MASKING_SCHEMES`); validation
        always uses the paper's chunk masks, so runs with either scheme are compared on
        the same targets.
    split_seed : int, optional
        Seed of the object-hash split (:data:`omnispectra.splits.DEFAULT_SEED` = 0 is the
        project's); None uses ``seed``. Several training seeds on one split need it.
    patch_size, stride : int
        Tokenizer settings; must match the model.
    pool_size : int, optional
        Length-bucketing pool (default ``50 * batch_size``).
    survey_weights : mapping, optional
        Per-survey sampling weights (see :class:`~omnispectra.dataset.WeightedLengthBucketSampler`);
        None keeps the natural mix.
    samples_per_epoch : int, optional
        Draws per epoch with ``survey_weights`` (default: the training set size).
    engine_fraction : float, optional
        Share of training draws that come from engine (simulated, ``engine_*``) surveys,
        whatever their size; the real surveys keep their relative ``survey_weights``
        (see :func:`mixture_weights`). None keeps the natural mix. Engine spectra are
        never validation spectra: they are not evidence about real data, and their
        noise donors are training-side already.
    labels : sequence of str, optional
        Label columns to carry in the batches (``Batch.labels``).
    auxiliary : bool
        Load :data:`~omnispectra.training.auxiliary.AUX_LABELS` and turn them into the
        targets of the auxiliary objectives (:class:`~omnispectra.training.auxiliary.AuxiliaryCollator`).
    pairs : bool
        Put both views of an engine object into one training batch
        (:class:`~omnispectra.training.auxiliary.PairedBatchSampler`; the invariance term).
    drop_last : bool
        Drop incomplete training batches.
    engine_stream : EngineStream, optional
        Engine spectra rendered during training (:mod:`omnispectra.training.stream`), added
        to the training side as engine surveys; every epoch draws new ones.
    """

    def __init__(
        self,
        corpus: Any,
        batch_size: int = 128,
        num_workers: int = 4,
        prefetch_factor: int | None = 2,
        pin_memory: bool | None = None,
        val_fraction: float = DEFAULT_VALIDATION_FRACTION,
        seed: int = 42,
        mask_ratio: float = MASK_RATIO,
        patch_size: int = PATCH_SIZE,
        stride: int = STRIDE,
        pool_size: int | None = None,
        survey_weights: Mapping[str, float] | None = None,
        samples_per_epoch: int | None = None,
        labels: Sequence[str] | None = None,
        drop_last: bool = False,
        engine_fraction: float | None = None,
        masking: str = "chunk",
        split_seed: int | None = None,
        auxiliary: bool = False,
        pairs: bool = False,
        engine_stream: Any = None,
    ) -> None:
        super().__init__()
        self.corpus = corpus
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.prefetch_factor = prefetch_factor
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.val_fraction = val_fraction
        self.seed = seed
        self.mask_ratio = mask_ratio
        self.masking = masking
        self.split_seed = seed if split_seed is None else split_seed
        self.patch_size = patch_size
        self.stride = stride
        self.pool_size = pool_size
        self.survey_weights = dict(survey_weights) if survey_weights else None
        self.samples_per_epoch = samples_per_epoch
        self.auxiliary, self.pairs = bool(auxiliary), bool(pairs)
        if self.auxiliary:
            from .auxiliary import AUX_LABELS

            labels = list(dict.fromkeys([*(labels or []), *AUX_LABELS]))
        self.labels = labels
        self.drop_last = drop_last
        if engine_fraction is not None and not 0.0 <= engine_fraction < 1.0:
            raise ValueError(f"engine_fraction must be in [0, 1), got {engine_fraction}")
        self.engine_fraction = engine_fraction
        self.engine_stream = engine_stream
        self.sampling_weights: dict[str, float] | None = None  # set by setup()
        self.dataset: SpectrumDataset | None = None
        self.train_dataset: SpectrumDataset | None = None
        self.val_dataset: SpectrumDataset | None = None
        self._epoch = 0
        self._resume: dict[str, int] | None = None

    # ----------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        """Open the corpora and make the fixed, object-grouped train/validation split."""
        if self.dataset is not None:
            return
        self.dataset = SpectrumDataset(self.corpus, patch_size=self.patch_size, stride=self.stride,
                                       labels=self.labels)
        surveys = np.asarray(self.dataset.surveys, dtype=str)
        synthetic = np.array([is_engine_survey(s) for s in surveys], dtype=bool)
        real = np.flatnonzero(~synthetic)
        train_idx, val_idx = split_by_object(np.asarray(self.dataset.object_ids, dtype=str)[real],
                                             surveys[real], self.val_fraction, seed=self.split_seed)
        train_idx = np.sort(np.concatenate([real[train_idx], np.flatnonzero(synthetic)]))
        val_idx = real[val_idx]
        self.train_dataset = self.dataset.subset(train_idx)
        self.val_dataset = self.dataset.subset(val_idx)
        if self.engine_stream is not None:
            from .stream import TrainingMix

            self.train_dataset = TrainingMix(self.train_dataset, self.engine_stream)
        # the training draws' weights, fixed with the split (and a bad mixture fails here, not mid-run)
        self.sampling_weights = self.survey_weights
        if self.engine_fraction is not None:
            self.sampling_weights = mixture_weights(self.train_dataset.surveys, self.survey_weights or {},
                                                    self.engine_fraction)

    def _trainer_or_none(self):
        try:
            return self.trainer
        except RuntimeError:  # pragma: no cover - some Lightning versions raise when detached
            return None

    def _replicas(self) -> tuple[int, int]:
        trainer = self._trainer_or_none()
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used when no trainer is attached (e.g. iterating the loader by hand)."""
        self._epoch = int(epoch)

    def _loader(self, dataset: SpectrumDataset, batch_sampler: Any, collator: Collator) -> DataLoader:
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            collate_fn=collator,
            num_workers=workers,
            prefetch_factor=self.prefetch_factor if workers > 0 else None,
            pin_memory=self.pin_memory,
            persistent_workers=False,
        )

    def train_sampler(self) -> Any:
        """The (unwrapped) rank-aware batch sampler of the training set."""
        if self.train_dataset is None:
            self.setup("fit")
        num_replicas, rank = self._replicas()
        ds = self.train_dataset
        common = dict(batch_size=self.batch_size, pool_size=self.pool_size, drop_last=self.drop_last,
                      seed=self.seed, num_replicas=num_replicas, rank=rank, with_epoch=True)
        if self.sampling_weights:
            sampler = WeightedLengthBucketSampler(ds.token_lengths, ds.surveys, self.sampling_weights,
                                                  num_samples=self.samples_per_epoch, **common)
        else:
            sampler = LengthBucketSampler(ds.token_lengths, shuffle=True, **common)
        if self.pairs:
            from .auxiliary import PairedBatchSampler, partner_index

            sampler = PairedBatchSampler(sampler, partner_index(ds.object_ids, ds.surveys))
        return sampler

    def train_dataloader(self) -> DataLoader:
        sampler = self.train_sampler()
        trainer = self._trainer_or_none()
        epoch = trainer.current_epoch if trainer is not None else self._epoch
        sampler.set_epoch(epoch)
        wrapped = _TrainerEpochSampler(sampler, self)
        if self._resume:
            wrapped.resume(self._resume["epoch"], self._resume["batches"])
        self._resume = None
        collator = Collator(mask=True, mask_ratio=self.mask_ratio, seed=self.seed, masking=self.masking)
        if self.auxiliary:
            from .auxiliary import AuxiliaryCollator

            collator = AuxiliaryCollator(collator, self.train_dataset.label_categories)
        return self._loader(self.train_dataset, wrapped, collator)

    def val_dataloader(self) -> DataLoader:
        if self.val_dataset is None:
            self.setup("validate")
        num_replicas, rank = self._replicas()
        if len(self.val_dataset) == 0:
            return []
        sampler = LengthBucketSampler(self.val_dataset.token_lengths, self.batch_size, shuffle=False,
                                      seed=self.seed, num_replicas=num_replicas, rank=rank)
        collator = Collator(mask=True, mask_ratio=self.mask_ratio, seed=self.seed)  # epoch 0, fixed
        return self._loader(self.val_dataset, sampler, collator)

    # ----------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        """Epoch and batches consumed in it (stored in Lightning checkpoints)."""
        trainer = self._trainer_or_none()
        if trainer is None:
            return {"epoch": self._epoch, "batches": 0}
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": int(trainer.current_epoch), "batches": int(progress.processed),
                "seed": int(self.seed)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Remember where the checkpointed run was, to skip those batches on resume."""
        self._resume = {"epoch": int(state_dict.get("epoch", 0)),
                        "batches": int(state_dict.get("batches", 0))}

    def describe(self) -> dict[str, Any]:
        """Sizes of the split per survey (for logs)."""
        if self.train_dataset is None:
            self.setup("fit")
        out: dict[str, Any] = {"n_train": len(self.train_dataset), "n_val": len(self.val_dataset),
                               "n_dropped": self.dataset.n_dropped, "surveys": {}}
        for name in self.dataset.survey_names:
            out["surveys"][name] = {
                "train": int(np.sum(self.train_dataset.surveys == name)),
                "val": int(np.sum(self.val_dataset.surveys == name)),
            }
        if self.engine_stream is not None:
            out["engine_stream"] = self.train_dataset.describe()
        return out
