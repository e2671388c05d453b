"""Batching variable-length token sets: padding, validity masks and length buckets.

The collator pads a list of token sets to the batch's maximum ``T`` (padding is zeros
and invalid), so spectra of different surveys and lengths share a batch (paper,
section *Tokenization*). Padding costs compute, so the :class:`LengthBucketSampler`
groups spectra of similar length: it sorts inside large shuffled pools, which keeps
surveys mixed across batches while cutting padding (the gain over padding a
mixed-survey batch to its maximum is measured by ``benchmarks/run.py``).

**Re-standardization of masked spectra.** The tokenizer standardizes each spectrum over
*all* its valid pixels, so the normalized fluxes sum to zero: with chunks masked, the
masked pixels' mean (and second moment) follow from the visible tokens, a shortcut the
model would learn instead of spectra. The collator therefore re-standardizes every
spectrum that has a masked token over its *visible* valid pixels (valid pixels of
valid, unmasked tokens; a pixel counts once per token slot, i.e. over exactly the
numbers the model sees): ``x -> (x - shift) / scale`` for fluxes and patch means,
``sigma -> sigma / scale``, on inputs *and* targets, so the visible fluxes have mean 0
and standard deviation 1 and carry nothing about the masked chunks' level or scale.
Spectra without a masked valid token (inference, probes) are left exactly as tokenized
(``shift = 0``, ``scale = 1``). The per-sample ``shift``/``scale`` travel in the
:class:`Batch`; :meth:`Batch.to_tokenizer_units` undoes them, and
:meth:`omnispectra.tokenizer.Tokens.pixel_flux` then undoes the tokenizer's
normalization, so a reconstruction still maps back to physical flux
(:func:`composed_normalization` gives the single affine map of both steps).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from .masking import MASK_RATIO, draw_mask, mask_rng
from .tokenizer import Normalization, Tokens

__all__ = [
    "Sample",
    "Batch",
    "collate",
    "Collator",
    "restandardization",
    "restandardize_tokens",
    "unstandardize_tokens",
    "composed_normalization",
    "MIN_RESTANDARDIZATION_SCALE",
    "LengthBucketSampler",
    "length_sorted_batches",
    "padding_fraction",
]


@dataclass
class Sample:
    """One training/inference item: a token set plus optional chunk mask and labels."""

    tokens: Tokens
    chunk_mask: np.ndarray | None = None
    labels: Mapping[str, float] | None = None
    id: str | None = None


@dataclass
class Batch:
    """A padded batch. ``B`` spectra, ``T`` = longest token count, ``p`` = patch size.

    Attributes
    ----------
    tokens : Tensor (B, T, p+2)
        Model input: masked chunks (if any) are zeroed; padding is zeros.
    target : Tensor (B, T, p+2)
        Unmasked tokens (the reconstruction target).
    wavelength : Tensor (B, T) float32
        Patch mean wavelengths in Angstrom (0 on padding).
    valid : Tensor (B, T) bool
        Token validity: False on padding and on mostly-invalid patches.
    pixel_valid : Tensor (B, T, p) bool
        Valid pixels inside each token.
    loss_mask : Tensor (B, T) bool
        Tokens that are masked *and* valid: the reconstruction targets.
    lengths : Tensor (B,) int64
        Unpadded token counts.
    labels : dict of Tensor (B,)
        Label columns present in any sample (NaN where a sample lacks one).
    ids : list of str or None
    shift, scale : Tensor (B,) float64, optional
        The collator's re-standardization of each sample: ``tokens`` and ``target`` are
        ``(tokenized - shift) / scale`` (see the module docstring); 0 and 1 for samples
        without a masked token. None means the identity for every sample.
    """

    tokens: torch.Tensor
    target: torch.Tensor
    wavelength: torch.Tensor
    valid: torch.Tensor
    pixel_valid: torch.Tensor
    loss_mask: torch.Tensor
    lengths: torch.Tensor
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    ids: list[str | None] = field(default_factory=list)
    shift: torch.Tensor | None = None
    scale: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Move every tensor to ``device``."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value.to(device, non_blocking=non_blocking)
            elif isinstance(value, dict):
                value = {k: v.to(device, non_blocking=non_blocking) for k, v in value.items()}
            moved[f.name] = value
        return Batch(**moved)

    def pin_memory(self) -> Batch:
        """Pin host memory (called by ``DataLoader(pin_memory=True)``)."""
        pinned = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value.pin_memory()
            elif isinstance(value, dict):
                value = {k: v.pin_memory() for k, v in value.items()}
            pinned[f.name] = value
        return Batch(**pinned)

    def to_tokenizer_units(self, tokens: torch.Tensor) -> torch.Tensor:
        """Undo the collator's re-standardization of (e.g. predicted) tokens ``(B, T, p+2)``.

        The result is in the units of :attr:`omnispectra.tokenizer.Tokens.tokens`, ready for
        :meth:`~omnispectra.tokenizer.Tokens.pixel_flux` (which maps to physical flux).
        Every slot is transformed, since a prediction has a value everywhere.
        """
        if self.shift is None or self.scale is None:
            return tokens
        shift = self.shift.to(tokens.device, torch.float32)
        scale = self.scale.to(tokens.device, torch.float32)
        return unstandardize_tokens(tokens.float(), shift, scale)


def _as_sample(item: Tokens | Sample) -> Sample:
    if isinstance(item, Sample):
        return item
    if isinstance(item, Tokens):
        return Sample(tokens=item, id=item.meta.get("id"))
    raise TypeError(f"collate expects Tokens or Sample items, got {type(item).__name__}")


MIN_RESTANDARDIZATION_SCALE = 1e-3
"""Floor of the re-standardization scale, in tokenizer units (where the whole spectrum has
standard deviation 1): a spectrum whose visible part is flat to better than 0.1% of its
overall spread would otherwise blow its masked targets up without bound."""


def restandardization(
    tokens: np.ndarray, valid: np.ndarray, pixel_valid: np.ndarray, chunk: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample ``(shift, scale)`` of the visible valid pixels of masked spectra.

    Parameters
    ----------
    tokens : ndarray (B, T, p+2)
        Tokens as tokenized (``[mu, sigma, f_1 .. f_p]``).
    valid : ndarray (B, T) bool
        Token validity.
    pixel_valid : ndarray (B, T, p) bool
        Pixel validity.
    chunk : ndarray (B, T) bool
        Masked tokens.

    Returns
    -------
    shift, scale : ndarray (B,) float64
        Mean and standard deviation (floored at :data:`MIN_RESTANDARDIZATION_SCALE`) of the
        fluxes in the visible valid pixel slots; ``0, 1`` for a sample with no masked
        valid token or fewer than two visible valid pixels.
    """
    visible = (valid & ~chunk)[..., None] & pixel_valid                # (B, T, p)
    flux = tokens[..., 2:].astype(np.float64)
    count = visible.sum(axis=(1, 2))
    denom = np.maximum(count, 1)
    mean = np.where(visible, flux, 0.0).sum(axis=(1, 2)) / denom
    var = (np.where(visible, flux - mean[:, None, None], 0.0) ** 2).sum(axis=(1, 2)) / denom
    use = (chunk & valid).any(axis=1) & (count >= 2)
    shift = np.where(use, mean, 0.0)
    scale = np.where(use, np.maximum(np.sqrt(var), MIN_RESTANDARDIZATION_SCALE), 1.0)
    return shift, scale


def restandardize_tokens(
    tokens: np.ndarray, valid: np.ndarray, pixel_valid: np.ndarray, shift: np.ndarray, scale: np.ndarray
) -> np.ndarray:
    """Apply ``f -> (f - shift) / scale`` per sample to tokens ``(B, T, p+2)``.

    Fluxes of valid pixels and the patch mean ``mu`` become ``(x - shift) / scale``, the
    patch ``sigma`` becomes ``sigma / scale``: exactly the tokens the tokenizer would have
    made with the composed normalization. Invalid pixels, invalid tokens and padding stay
    zero.
    """
    shift = np.asarray(shift, dtype=np.float64)[:, None, None]
    scale = np.asarray(scale, dtype=np.float64)[:, None, None]
    out = np.zeros_like(tokens)
    has_pixels = valid & pixel_valid.any(axis=-1)                      # (B, T)
    out[..., 0] = np.where(has_pixels, (tokens[..., 0] - shift[..., 0]) / scale[..., 0], 0.0)
    out[..., 1] = np.where(valid, tokens[..., 1] / scale[..., 0], 0.0)
    out[..., 2:] = np.where(valid[..., None] & pixel_valid, (tokens[..., 2:] - shift) / scale, 0.0)
    return out


def unstandardize_tokens(tokens: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`restandardize_tokens` on every slot: ``x -> x * scale + shift``
    for ``mu`` and fluxes, ``sigma -> sigma * scale``."""
    scale = scale[:, None, None]
    offset = torch.zeros_like(tokens)
    offset[..., [0]] = shift[:, None, None]
    offset[..., 2:] = shift[:, None, None]
    return tokens * scale + offset


def composed_normalization(base: Normalization, shift: float, scale: float) -> Normalization:
    """The single affine map ``physical -> batch units`` of the tokenizer's ``base``
    followed by the collator's ``(x - shift) / scale``."""
    return Normalization(shift=base.shift + float(shift) * base.scale, scale=base.scale * float(scale))


def collate(items: Sequence[Tokens | Sample], pad_to: int | None = None, restandardize: bool = True) -> Batch:
    """Pad token sets to a common length and stack them into a :class:`Batch`.

    Parameters
    ----------
    items : sequence of Tokens or Sample
        Token sets of one batch; a :class:`Sample`'s ``chunk_mask`` marks masked tokens.
    pad_to : int, optional
        Pad to at least this many tokens (default: the batch maximum).
    restandardize : bool
        Re-standardize each masked spectrum over its visible valid pixels (see the module
        docstring). False reproduces the leaky tokenizer-only normalization (kept for
        measuring the leak and for comparing models).
    """
    samples = [_as_sample(item) for item in items]
    if not samples:
        raise ValueError("cannot collate an empty batch")
    n_batch = len(samples)
    lengths = np.array([s.tokens.n_tokens for s in samples])
    n_tok = int(max(lengths.max(), pad_to or 0))
    patch = samples[0].tokens.patch_size
    if any(s.tokens.patch_size != patch for s in samples):
        raise ValueError("all token sets of a batch must share one patch size")

    target = np.zeros((n_batch, n_tok, patch + 2), dtype=np.float32)
    wavelength = np.zeros((n_batch, n_tok), dtype=np.float32)
    valid = np.zeros((n_batch, n_tok), dtype=bool)
    pixel_valid = np.zeros((n_batch, n_tok, patch), dtype=bool)
    chunk = np.zeros((n_batch, n_tok), dtype=bool)
    for b, s in enumerate(samples):
        t = lengths[b]
        target[b, :t] = s.tokens.tokens
        wavelength[b, :t] = s.tokens.wavelength
        valid[b, :t] = s.tokens.valid
        pixel_valid[b, :t] = s.tokens.pixel_valid
        if s.chunk_mask is not None:
            if s.chunk_mask.shape != (t,):
                raise ValueError(f"chunk mask of shape {s.chunk_mask.shape} for {t} tokens")
            chunk[b, :t] = s.chunk_mask
    shift, scale = np.zeros(n_batch), np.ones(n_batch)
    if restandardize and chunk.any():
        shift, scale = restandardization(target, valid, pixel_valid, chunk)
        target = restandardize_tokens(target, valid, pixel_valid, shift, scale).astype(np.float32)
    inputs = np.where(chunk[..., None], 0.0, target).astype(np.float32)

    label_names = sorted({k for s in samples if s.labels for k in s.labels})
    labels = {}
    for name in label_names:
        column = [np.nan if not s.labels or s.labels.get(name) is None else s.labels[name]
                  for s in samples]
        labels[name] = torch.as_tensor(np.asarray(column, dtype=np.float64))
    return Batch(
        tokens=torch.from_numpy(inputs),
        target=torch.from_numpy(target),
        wavelength=torch.from_numpy(wavelength),
        valid=torch.from_numpy(valid),
        pixel_valid=torch.from_numpy(pixel_valid),
        loss_mask=torch.from_numpy(chunk & valid),
        lengths=torch.from_numpy(lengths.astype(np.int64)),
        labels=labels,
        ids=[s.id if s.id is not None else s.tokens.meta.get("id") for s in samples],
        shift=torch.from_numpy(shift),
        scale=torch.from_numpy(scale),
    )


class Collator:
    """DataLoader ``collate_fn`` that draws chunk masks reproducibly and pads.

    Items are ``(key, Tokens or Sample)`` pairs where ``key`` is the dataset index or an
    ``(epoch, index)`` pair (see ``LengthBucketSampler(with_epoch=True)``; a plain index
    uses the epoch set with :meth:`set_epoch`). The mask of dataset item ``index`` in
    ``epoch`` is drawn from :func:`~omnispectra.masking.mask_rng` ``(seed, epoch, index)``,
    so it does not depend on worker count or batch composition.

    Parameters
    ----------
    mask : bool
        Draw chunk masks (pretraining) or not (inference, probes).
    mask_ratio : float
        gamma of the chunk masking.
    seed : int
        Run seed.
    restandardize : bool
        See :func:`collate` (False only to reproduce the old, leaky normalization).
    masking : str
        Mask scheme (:data:`~omnispectra.masking.MASKING_SCHEMES`): ``chunk`` (the paper's)
        or ``random`` (scattered tokens, an ablation).
    """

    def __init__(self, mask: bool = True, mask_ratio: float = MASK_RATIO, seed: int = 42,
                 restandardize: bool = True, masking: str = "chunk") -> None:
        self.mask = mask
        self.masking = masking
        self.restandardize = restandardize
        self.mask_ratio = mask_ratio
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose masks are drawn."""
        self.epoch = int(epoch)

    def __call__(self, items: Sequence[tuple[int | tuple[int, int], Tokens | Sample]]) -> Batch:
        samples = []
        for key, item in items:
            sample = _as_sample(item)
            epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
            if self.mask:
                rng = mask_rng(self.seed, epoch, index)
                cm = draw_mask(sample.tokens.n_tokens, rng, sample.tokens.patch_size, self.mask_ratio,
                               self.masking)
                sample = Sample(sample.tokens, cm, sample.labels, sample.id)
            samples.append(sample)
        return collate(samples, restandardize=self.restandardize)


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Fraction of token slots that are padding when ``batches`` are padded to their maximum."""
    lengths = np.asarray(lengths)
    total = sum(len(b) * lengths[list(b)].max() for b in batches if len(b))
    return 1.0 - lengths.sum() / total if total else 0.0


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Deterministic inference batches of similar length (longest first).

    Returns lists of indices into ``lengths``; concatenated, they are a permutation, so
    callers restore input order with ``np.argsort(np.concatenate(batches))``.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]


class LengthBucketSampler(torch.utils.data.Sampler[list[int]]):
    """Batch sampler that groups spectra of similar token count.

    Each epoch the indices are shuffled, split into pools of ``pool_size`` (default
    ``50 * batch_size``), each pool is sorted by length and cut into batches, and the
    batches are shuffled. Large pools keep surveys mixed in the epoch while similar
    lengths share a batch.

    Under distributed training each rank takes every ``num_replicas``-th batch; the
    batch count is padded (by repeating batches) so every rank sees the same number.

    Parameters
    ----------
    lengths : sequence of int
        Token count of every dataset item.
    batch_size : int
        Spectra per batch (per device).
    shuffle : bool
        Shuffle pools and batches (training); False gives length-sorted batches.
    pool_size : int, optional
        Spectra per sorting pool.
    drop_last : bool
        Drop each pool's last incomplete batch.
    seed : int
        Base seed; the epoch set with :meth:`set_epoch` is mixed in.
    num_replicas, rank : int, optional
        Distributed world size and rank; taken from ``torch.distributed`` when it is
        initialized and these are None.
    with_epoch : bool
        Yield ``(epoch, index)`` keys instead of plain indices, so that the dataset and
        :class:`Collator` know the epoch inside data-loader worker processes (chunk masks
        are drawn from ``(seed, epoch, index)``).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        pool_size: int | None = None,
        drop_last: bool = False,
        seed: int = 42,
        num_replicas: int | None = None,
        rank: int | None = None,
        with_epoch: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.pool_size = int(pool_size or 50 * batch_size)
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0
        dist = torch.distributed
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.with_epoch = with_epoch
        self._skip: tuple[int | None, int] = (None, 0)

    def set_epoch(self, epoch: int) -> None:
        """Reseed the shuffle for ``epoch`` (call before iterating, as with DistributedSampler)."""
        self.epoch = int(epoch)

    def skip_next(self, n_batches: int, epoch: int | None = None) -> None:
        """Skip the first ``n_batches`` of the next iteration only (exact mid-epoch resume).

        With ``epoch`` given, the skip applies only if the next iteration is of that epoch
        (a run checkpointed on the last batch of an epoch resumes in the next one).
        """
        self._skip = (None if epoch is None else int(epoch), max(0, int(n_batches)))

    def epoch_indices(self) -> np.ndarray:
        """The dataset indices of the current epoch, before bucketing (subclasses may resample)."""
        if not self.shuffle:
            return np.arange(len(self.lengths))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.lengths))

    def _all_batches(self) -> list[list[int]]:
        order = self.epoch_indices()
        batches = []
        for start in range(0, len(order), self.pool_size):
            pool = order[start:start + self.pool_size]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            for i in range(0, len(pool), self.batch_size):
                batch = pool[i:i + self.batch_size]
                if len(batch) < self.batch_size and self.drop_last:
                    continue
                batches.append(batch.tolist())
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch, 1])
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.num_replicas > 1 and batches:
            per_rank = math.ceil(len(batches) / self.num_replicas)
            batches += batches[: per_rank * self.num_replicas - len(batches)]
        return batches

    def __iter__(self) -> Iterator[list]:
        (skip_epoch, skip), self._skip = self._skip, (None, 0)
        if skip_epoch is not None and skip_epoch != self.epoch:
            skip = 0
        for batch in self._all_batches()[self.rank::self.num_replicas][skip:]:
            yield [(self.epoch, i) for i in batch] if self.with_epoch else batch

    def __len__(self) -> int:
        return len(self._all_batches()[self.rank::self.num_replicas])
