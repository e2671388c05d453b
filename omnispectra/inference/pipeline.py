"""The one way spectra go through the model: options, batching, the forward pass, provenance.

A verb builds one :class:`RunOptions` from its arguments and calls :func:`forward`, which
expands the inputs (:class:`~omnispectra.inference.inputs.Inputs`: each spectrum read,
turned into arrays and tokenized once), batches spectra of similar length inside pools
(:func:`~omnispectra.collate.length_sorted_batches`), embeds and/or reconstructs them
with masks (the anomaly measures of :mod:`omnispectra.inference.scoring`) and returns
the rows in input order. Rows whose outputs are not finite are rejected per
``on_error``. :func:`result_meta` and :func:`item_table` give every result table the same
provenance and the same first columns.
"""

from __future__ import annotations

import logging
import numbers
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..exceptions import NonFiniteOutputError
from ..runtime import inference, model_device, resolve_dtype, wavelength_support
from ..tokenizer import Tokens
from .inputs import InputItem, Inputs, prepare_tokens
from .scoring import Masks, masked_chi2, mean_over_masks, per_sample_mse

if TYPE_CHECKING:  # pragma: no cover
    from ..model import OmniSpectra

__all__ = ["RunOptions", "Pass", "open_inputs", "run_batches", "forward", "masked_scores", "result_meta",
           "item_table", "POOL_FACTOR", "MASKED_TOKENS_PER_PASS",
           "MASKED_TOKENS_PER_PASS_CPU", "EMBED_TOKENS_PER_PASS_CPU", "tokens_per_pass_rows"]

logger = logging.getLogger(__name__)

#: Spectra held (tokenized) at once = ``POOL_FACTOR * batch_size``.
POOL_FACTOR = 32

#: Padded tokens per forward pass of the masked copies in :func:`masked_scores` on an
#: accelerator (bounds its memory: activations grow with rows x longest token count).
MASKED_TOKENS_PER_PASS = 1 << 16
#: The same on CPU, where launches cost little and large passes leave the caches: 16 SDSS
#: spectra x 8 masks took 6.9 s in passes of 65536 tokens, 4.9 s in passes of 4096.
MASKED_TOKENS_PER_PASS_CPU = 1 << 12

#: Padded tokens per forward pass of the embedding on CPU (an accelerator takes the whole
#: batch). A pass's attention is (rows, heads, tokens, tokens): 32 BOSS-length spectra (463
#: tokens) in one pass raised the peak memory by 180-320 MB, in passes of 4096 tokens by
#: 12-15 MB, at the same or a higher rate (128 engine spectra, 1 and 2 threads).
EMBED_TOKENS_PER_PASS_CPU = 1 << 12


def tokens_per_pass_rows(tokens: list[Tokens], budget: int | None) -> int:
    """Rows of ``tokens`` per forward pass so that rows x the longest token count stays within
    ``budget`` padded tokens (at least one row; all rows when ``budget`` is None)."""
    if budget is None:
        return max(1, len(tokens))
    return max(1, int(budget) // max(1, max(t.n_tokens for t in tokens)))


@dataclass(frozen=True)
class RunOptions:
    """How a verb runs over its inputs (the arguments every verb shares; see :func:`omnispectra.api.embed`).

    Attributes
    ----------
    batch_size : int
        Spectra per forward pass.
    dtype : torch.dtype, str or None
        Autocast dtype (``"auto"``: :func:`~omnispectra.runtime.default_dtype` of the device).
    progress : bool, tqdm-like or None
        Progress bar on stderr (None: when stderr is a terminal and there are several spectra).
    format : str or None
        Reader for paths instead of auto-detection.
    on_error : {"raise", "skip", "warn"}
        What an unusable input does.
    workers : int or None
        Threads reading and tokenizing ahead of the model.
    """

    batch_size: int = 32
    dtype: Any = "auto"
    progress: Any = None
    format: str | None = None
    on_error: str = "raise"
    workers: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.batch_size, numbers.Integral) and self.batch_size >= 1):
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")


def open_inputs(spectra: Any, net: OmniSpectra, options: RunOptions, measure: bool = False) -> Inputs:
    """The inputs of a call, each tokenized for ``net`` (and measured for the flags with ``measure``)."""
    cfg = net.config
    support = wavelength_support(net)
    return Inputs(spectra, format=options.format, on_error=options.on_error, workers=options.workers,
                  prepare=lambda item: prepare_tokens(item, cfg.patch_size, cfg.stride, support, measure))


def progress_bar(progress: Any, total: int | None, desc: str):
    """A tqdm bar on stderr (None: no bar); an object with ``update`` is used as it is."""
    if hasattr(progress, "update"):
        if total is not None and getattr(progress, "total", None) is None:
            progress.total = total
        return progress
    if progress is None:
        progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="spectra", file=sys.stderr)


def run_batches(
    inputs: Inputs,
    compute: Callable[[list[Tokens]], np.ndarray],
    options: RunOptions,
    desc: str,
    accept: Callable[[np.ndarray], bool] | None = None,
) -> tuple[list[np.ndarray], list[InputItem]]:
    """Batch the inputs' tokens by length inside pools, compute, keep input order.

    Rows that ``accept`` refuses (default: any NaN/inf) are rejected: raised as
    :class:`NonFiniteOutputError` or skipped, per ``on_error``.
    """
    accept = accept or (lambda row: bool(np.all(np.isfinite(row))))
    from ..collate import length_sorted_batches

    batch_size, progress = options.batch_size, options.progress
    results: list[np.ndarray] = []
    kept: list[InputItem] = []
    show = progress if progress is not None else (None if not inputs.single else False)
    total = inputs.count()  # None for files: their number of spectra is known once read
    bar = progress_bar(show, total, desc)
    pool_size = POOL_FACTOR * batch_size

    def flush(pool: list[InputItem]) -> None:
        if not pool:
            return
        batches = length_sorted_batches([item.prepared.n_tokens for item in pool], batch_size)
        out: list[Any] = [None] * len(pool)
        for batch in batches:
            values = compute([pool[i].prepared for i in batch])
            for i, row in zip(batch, values, strict=True):
                out[i] = row
            if bar is not None:
                bar.update(len(batch))
        for item, row in zip(pool, out, strict=True):
            if accept(row):
                results.append(row)
                kept.append(item)
            else:
                inputs.reject(item, NonFiniteOutputError(
                    f"spectrum {item.id!r}: the model's {desc} output is not finite (NaN or inf)"))

    own_bar = not hasattr(progress, "update")
    last_refresh = time.monotonic()
    try:
        pool: list[InputItem] = []
        for n_read, item in enumerate(inputs, 1):
            pool.append(item)
            if bar is not None and total is None:  # the total grows as files are read
                bar.total = n_read
            if bar is not None and hasattr(bar, "set_postfix_str") and time.monotonic() - last_refresh > 0.5:
                # the bar counts computed spectra; while a pool is being read, show reading moves
                bar.set_postfix_str(f"read {n_read}")
                last_refresh = time.monotonic()
            if len(pool) >= pool_size:
                flush(pool)
                pool = []
        flush(pool)
    finally:
        if bar is not None and own_bar:
            bar.close()
    return results, kept


def result_meta(net: OmniSpectra, inputs: Inputs, torch_dtype: Any, probe: Any = None,
                kind: str | None = None) -> dict[str, Any]:
    """What every result table's ``meta`` holds: provenance, counts, skipped inputs.

    Provenance (:func:`omnispectra.results.provenance_meta`): ``OMNIVERS``, ``MODEL``,
    ``MODELSHA``, ``ENCSHA``, [``PROBE``, ``PROBESHA``], ``DTYPE`` (the dtype actually
    used), ``DEVICE``, ``KIND``.
    """
    from ..results import provenance_meta

    return {
        **provenance_meta(net, probe=probe, dtype=torch_dtype, kind=kind),
        "n_inputs": inputs.n_inputs,
        "n_read": inputs.n_read,
        "n_skipped": len(inputs.skipped),
        "skipped": inputs.skipped_meta(),
    }


@dataclass
class Pass:
    """What one pass over the inputs gave, rows in input order (rejected rows left out)."""

    vectors: np.ndarray          # (N, D) float32 embeddings (empty (N, 0) when not asked)
    mse: np.ndarray              # (N,) anomaly_score (NaN when not asked)
    chi2: np.ndarray             # (N,) anomaly statistic (NaN when not asked)
    items: list[InputItem]
    inputs: Inputs
    torch_dtype: Any


def forward(spectra: Any, net: OmniSpectra, options: RunOptions, *, embed: bool = True,
            masks: Masks | None = None, measure: bool = False, desc: str = "embedding") -> Pass:
    """Embed and/or score the inputs in one pass (each spectrum read and tokenized once).

    A row is rejected (raised or skipped per ``on_error``) when its embedding or any
    reconstruction is not finite.
    """
    from ..collate import collate

    inputs = open_inputs(spectra, net, options, measure=measure or masks is not None)
    dev = model_device(net)
    torch_dtype = resolve_dtype(options.dtype, dev)
    cfg = net.config
    width = cfg.dim if embed else 0

    def compute(tokens: list[Tokens]) -> np.ndarray:
        """Rows ``[embedding (width), mse, chi2, all outputs finite]``."""
        out = np.full((len(tokens), width + 3), np.nan)
        out[:, -1] = 1.0
        if embed:
            step = tokens_per_pass_rows(tokens, EMBED_TOKENS_PER_PASS_CPU if dev.type == "cpu" else None)
            with inference(net, torch_dtype):
                for start in range(0, len(tokens), step):
                    batch = collate(tokens[start:start + step]).to(dev)
                    out[start:start + step, :width] = net.embed(batch.tokens, batch.wavelength,
                                                                batch.valid).float().cpu().numpy()
        if masks is None:
            return out
        mse, chi2, finite = masked_scores(net, tokens, masks, torch_dtype)
        out[:, -1] *= finite
        out[:, width] = mean_over_masks(mse)
        out[:, width + 1] = mean_over_masks(chi2)
        return out

    def accept(row: np.ndarray) -> bool:
        return bool(row[-1] > 0 and np.all(np.isfinite(row[:width])))

    rows, kept = run_batches(inputs, compute, options, desc, accept=accept)
    table = np.stack(rows) if rows else np.zeros((0, width + 3))
    return Pass(table[:, :width].astype(np.float32), table[:, width], table[:, width + 1], kept, inputs,
                 torch_dtype)


def masked_scores(net: OmniSpectra, tokens: list[Tokens], masks: Masks, torch_dtype: Any,
                  tokens_per_pass: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masked MSE and chi-square of every spectrum under every mask, the masked copies batched.

    The ``masks.n`` masked copies of each spectrum (mask ``k`` drawn from
    ``mask_rng(masks.seed, k, 0)``, as one pass per mask would) are stacked in the batch,
    mask-major, and run through the model in passes of at most ``tokens_per_pass`` padded
    tokens (default :data:`MASKED_TOKENS_PER_PASS`, :data:`MASKED_TOKENS_PER_PASS_CPU` on CPU;
    at least one row per pass), so kernel launches on an accelerator do not grow with the
    number of masks while memory stays bounded.

    Parameters
    ----------
    net : OmniSpectra
    tokens : list of Tokens
        Made with ``meta['pixel_ivar']`` for the chi-square (NaN without it).
    masks : Masks
    torch_dtype : torch.dtype or None
        Autocast dtype (as :func:`omnispectra.runtime.inference` takes it).
    tokens_per_pass : int, optional

    Returns
    -------
    mse, chi2 : ndarray (masks.n, len(tokens))
    finite : ndarray (len(tokens),) of bool
        Every reconstruction of the spectrum is finite.
    """
    import torch

    from ..collate import Sample, collate
    from ..masking import chunk_mask, mask_rng

    cfg, dev, n = net.config, model_device(net), len(tokens)
    default = MASKED_TOKENS_PER_PASS_CPU if dev.type == "cpu" else MASKED_TOKENS_PER_PASS
    budget = default if tokens_per_pass is None else int(tokens_per_pass)
    rows = [(k, b) for k in range(masks.n) for b in range(n)]          # mask-major
    mse, chi2 = np.zeros((masks.n, n)), np.zeros((masks.n, n))
    finite = np.ones(n, dtype=bool)
    step = tokens_per_pass_rows(tokens, budget)
    for start in range(0, len(rows), step):
        chunk = rows[start:start + step]
        samples = [Sample(tokens[b], chunk_mask(tokens[b].n_tokens, mask_rng(masks.seed, k, 0),
                                                cfg.patch_size, cfg.mask_ratio)) for k, b in chunk]
        batch = collate(samples).to(dev)
        with inference(net, torch_dtype):
            pred = net.reconstruct(batch.tokens, batch.wavelength, batch.valid)
            scores = per_sample_mse(pred, batch.target, batch.loss_mask, batch.pixel_valid).double()
            scores = scores.cpu().numpy()
            ok = torch.isfinite(pred.float()).flatten(1).all(dim=1).cpu().numpy()
            predicted = batch.to_tokenizer_units(pred.float()).cpu().numpy()
        loss_mask = batch.loss_mask.cpu().numpy()
        for i, (k, b) in enumerate(chunk):
            t = tokens[b]
            mse[k, b] = scores[i]
            finite[b] &= bool(ok[i])
            chi2[k, b] = masked_chi2(t, predicted[i, :t.n_tokens], loss_mask[i, :t.n_tokens])
    return mse, chi2, finite


def item_table(items: list[InputItem]):
    """``id``, ``source_file``, ``survey`` columns for the rows that survived."""
    from astropy.table import Table

    table = Table()
    table["id"] = np.asarray([item.id for item in items], dtype=str)
    sources = [str((getattr(item.spectrum, "meta", None) or {}).get("source_file", "")
                   if not isinstance(item.spectrum, tuple) else "") or
               ("" if item.source.startswith("input ") else item.source) for item in items]
    table["source_file"] = np.asarray(sources, dtype=str)
    table["survey"] = np.asarray([item.survey for item in items], dtype=str)
    return table
