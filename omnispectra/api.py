"""High-level functions: spectra in, embeddings, reconstructions and scores out.

Every function here accepts spectra in the same forms (see :func:`embed`; the inputs are
expanded by :class:`omnispectra.inputs.Inputs`, so a folder gives the same files as
``omnispectra corpus build``) and a model as a name, a weights-file path or an
:class:`~omnispectra.model.OmniSpectra` instance (resolved by
:func:`omnispectra.runtime.resolve_model`). Inference batches spectra of similar length
together (:func:`~omnispectra.collate.length_sorted_batches`) and returns rows in input
order.

Inputs that cannot be used follow ``on_error``: ``"raise"`` (default) raises the typed
error naming the input; ``"skip"`` and ``"warn"`` leave it out, log it (``"warn"`` also
emits a :class:`~omnispectra.inputs.SpectrumReadWarning`) and list it in the result
table's ``meta['skipped']`` as ``{source, reason[, id]}``. Every spectrum is checked at
the boundary: its length (:data:`omnispectra.spectrum.DEFAULT_MAX_PIXELS`), unit-less
wavelengths against the model's wavelength support
(:func:`omnispectra.runtime.check_wavelength_plausible`), a spectrum entirely outside
that support (:func:`omnispectra.runtime.check_support`), and every embedding and class
probability for NaN/inf (:class:`~omnispectra.exceptions.NonFiniteOutputError`; never a
class from NaN).

The predictors (:func:`classify`, :func:`predict_stellar_parameters`,
:func:`predict_redshift`, :func:`anomaly_score` with ``as_table=True``) give every row a
``flag`` bitmask (:class:`omnispectra.flags.Flag`, ``flag == 0``: use it); the rules that
set its bits live in :mod:`omnispectra.flags` (see ``docs/flags.rst``), this module only
measures the inputs and calls them. A non-finite *regression* value (or a redshift that
could not be fitted) is returned with ``NONFINITE`` set rather than refused.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .exceptions import (
    CheckpointError,
    InvalidSpectrumError,
    NonFiniteOutputError,
    OmniSpectraError,
    SpectrumTypeError,
)
from .inputs import InputItem, Inputs
from .runtime import (
    WavelengthSupport,
    check_support,
    check_wavelength_plausible,
    default_dtype,
    inference,
    model_device,
    resolve_dtype,
    resolve_model,
    wavelength_support,
)
from .spectrum import spectrum_data
from .tokenizer import Tokens, patch_index, tokenize

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .model import OmniSpectra

__all__ = ["embed", "reconstruct", "anomaly_score", "anomaly_statistic", "anomaly_threshold", "masked_chi2",
           "ANOMALY_N_MASKS",
           "ANOMALY_MODEL_FLOOR", "Reconstruction", "token_summary",
           "classify", "predict_stellar_parameters", "predict_redshift", "bundled_probe_path",
           "resolve_probe", "default_dtype", "PROBE_FILES", "fitter_name", "FLAG_DESCRIPTION",
           "ANOMALY_DESCRIPTION", "measure_input"]

logger = logging.getLogger(__name__)

_POOL_FACTOR = 32  # spectra held (tokenized) at once = _POOL_FACTOR * batch_size


# ---------------------------------------------------------------------------------------
# inputs -> tokens


def _with_context(err: OmniSpectraError, context: str) -> OmniSpectraError:
    try:
        return type(err)(f"{context}: {err}")
    except Exception:  # pragma: no cover - an exception class with another signature
        return err


def _tokens_for(item: InputItem, patch_size: int, stride: int,
                support: WavelengthSupport | None, measure: bool = False) -> Tokens:
    """Tokens of one input, checked against the model's wavelength support.

    With ``measure``, ``tok.meta`` also gets ``quality`` (:class:`~omnispectra.flags.SpectrumQuality`,
    for the flags) and ``pixel_ivar`` (``(T, p)`` inverse variance in the tokenizer's
    normalized flux units, 0 on invalid pixels; None without uncertainties), which the
    anomaly statistic needs.
    """
    obj = item.spectrum
    context = f"spectrum {item.id!r}" + ("" if item.source.startswith("input ") else f" ({item.source})")
    try:
        if isinstance(obj, Tokens):
            if (obj.patch_size, obj.stride) != (patch_size, stride):
                raise InvalidSpectrumError(
                    f"tokens have patch size/stride {obj.patch_size}/{obj.stride}, the model "
                    f"expects {patch_size}/{stride}")
            tok = dataclasses.replace(obj, meta=dict(obj.meta or {}))
        else:
            args = obj if isinstance(obj, tuple) else (obj,)
            if isinstance(obj, tuple):
                data = spectrum_data(*obj)
                if not data.wavelength_unit_given:
                    check_wavelength_plausible(data.wavelength, support)
            tok = tokenize(*args, patch_size=patch_size, stride=stride)
        check_support(tok.wavelength[tok.valid], support)
    except OmniSpectraError as err:
        raise _with_context(err, context) from err
    tok.meta = {**tok.meta, "id": item.id}
    if measure:
        tok.meta["quality"], tok.meta["pixel_ivar"] = measure_input(obj, tok, support)
    return tok


def measure_input(obj: Any, tok: Tokens, support: WavelengthSupport | None):
    """``(SpectrumQuality, pixel ivar (T, p) in normalized units or None)`` of one input.

    ``obj`` is the spectrum (or ``(wavelength, flux, ...)`` tuple, or Tokens) that
    ``tok`` was cut from; the quality feeds :func:`omnispectra.flags.input_flags`.
    """
    from .flags import SpectrumQuality, spectrum_quality, support_fraction

    n_valid_tokens = int(tok.valid.sum())
    if isinstance(obj, Tokens):  # no pixels left: only what the tokens tell
        return SpectrumQuality(n_valid_tokens, float("nan"),
                               support_fraction(tok.wavelength[tok.valid], support)), None
    data = spectrum_data(*obj) if isinstance(obj, tuple) else spectrum_data(obj)
    # readers of files without errors put a placeholder ivar of 1 (and say so in meta)
    placeholder = bool((getattr(obj, "meta", None) or {}).get("ivar_is_placeholder"))
    ivar = data.ivar if data.has_ivar and not placeholder else None
    quality = spectrum_quality(data.wavelength, data.flux, ivar, data.bad, n_valid_tokens, support)
    if ivar is None:
        return quality, None
    index = patch_index(tok.n_pixels, tok.patch_size, tok.stride)
    safe = np.minimum(index, tok.n_pixels - 1)
    # the ivar of normalized flux f / scale is ivar * scale**2
    pixel_ivar = np.where(tok.pixel_valid, ivar[safe] * tok.normalization.scale ** 2, 0.0)
    return quality, pixel_ivar.astype(np.float64)


def _inputs(spectra: Any, net: OmniSpectra, format: str | None, on_error: str,
            workers: int | None, measure: bool = False) -> Inputs:
    cfg = net.config
    support = wavelength_support(net)
    return Inputs(spectra, format=format, on_error=on_error, workers=workers,
                  prepare=lambda item: _tokens_for(item, cfg.patch_size, cfg.stride, support, measure))


def _progress_bar(progress: Any, total: int | None, desc: str):
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


def _run(
    inputs: Inputs,
    compute: Callable[[list[Tokens]], np.ndarray],
    batch_size: int,
    progress: bool | None,
    desc: str,
    accept: Callable[[np.ndarray], bool] | None = None,
) -> tuple[list[np.ndarray], list[InputItem]]:
    """Batch the inputs' tokens by length inside pools, compute, keep input order.

    Rows that ``accept`` refuses (default: any NaN/inf) are rejected: raised as
    :class:`NonFiniteOutputError` or skipped, per ``on_error``.
    """
    accept = accept or (lambda row: bool(np.all(np.isfinite(row))))
    from .collate import length_sorted_batches

    if not (isinstance(batch_size, numbers.Integral) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    results: list[np.ndarray] = []
    kept: list[InputItem] = []
    show = progress if progress is not None else (None if not inputs.single else False)
    total = inputs.count()  # None for files: their number of spectra is known once read
    bar = _progress_bar(show, total, desc)
    pool_size = _POOL_FACTOR * batch_size

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


def _meta(net: OmniSpectra, inputs: Inputs, torch_dtype: Any, probe: Any = None,
          kind: str | None = None) -> dict[str, Any]:
    """What every result table's ``meta`` holds: provenance, counts, skipped inputs.

    Provenance (:func:`omnispectra.results.provenance_meta`): ``OMNIVERS``, ``MODEL``,
    ``MODELSHA``, ``ENCSHA``, [``PROBE``, ``PROBESHA``], ``DTYPE`` (the dtype actually
    used), ``DEVICE``, ``KIND``.
    """
    from .results import provenance_meta

    return {
        **provenance_meta(net, probe=probe, dtype=torch_dtype, kind=kind),
        "n_inputs": inputs.n_inputs,
        "n_read": inputs.n_read,
        "n_skipped": len(inputs.skipped),
        "skipped": inputs.skipped_meta(),
    }


#: Masks of the anomaly statistic behind the predictors' ``ANOMALY`` bit (and the default
#: of :func:`anomaly_statistic`, with which the card's threshold is computed).
ANOMALY_N_MASKS = 8


@dataclass(frozen=True)
class _Masks:
    """The chunk masks of the anomaly measures: ``n`` masks drawn from ``mask_rng(seed, k, 0)``."""

    n: int = ANOMALY_N_MASKS
    seed: int = 0


@dataclass
class _Pass:
    """What one pass over the inputs gave, rows in input order (rejected rows left out)."""

    vectors: np.ndarray          # (N, D) float32 embeddings (empty (N, 0) when not asked)
    mse: np.ndarray              # (N,) anomaly_score (NaN when not asked)
    chi2: np.ndarray             # (N,) anomaly statistic (NaN when not asked)
    items: list[InputItem]
    inputs: Inputs
    torch_dtype: Any


def _forward(spectra, net, batch_size, dtype, progress, format, on_error, workers, *, embed: bool = True,
             masks: _Masks | None = None, measure: bool = False, desc: str = "embedding") -> _Pass:
    """Embed and/or score the inputs in one pass (each spectrum read and tokenized once).

    A row is rejected (raised or skipped per ``on_error``) when its embedding or any
    reconstruction is not finite.
    """
    import torch

    from .collate import Sample, collate
    from .masking import chunk_mask, mask_rng

    inputs = _inputs(spectra, net, format, on_error, workers, measure=measure or masks is not None)
    dev = model_device(net)
    torch_dtype = resolve_dtype(dtype, dev)
    cfg = net.config
    width = cfg.dim if embed else 0

    def compute(tokens: list[Tokens]) -> np.ndarray:
        """Rows ``[embedding (width), mse, chi2, all outputs finite]``."""
        out = np.full((len(tokens), width + 3), np.nan)
        out[:, -1] = 1.0
        if embed:
            batch = collate(tokens).to(dev)
            with inference(net, torch_dtype):
                out[:, :width] = net.embed(batch.tokens, batch.wavelength, batch.valid).float().cpu().numpy()
        if masks is None:
            return out
        mse = np.zeros((masks.n, len(tokens)))
        chi2 = np.zeros((masks.n, len(tokens)))
        for k in range(masks.n):
            samples = [Sample(t, chunk_mask(t.n_tokens, mask_rng(masks.seed, k, 0), cfg.patch_size,
                                            cfg.mask_ratio)) for t in tokens]
            batch = collate(samples).to(dev)
            with inference(net, torch_dtype):
                pred = net.reconstruct(batch.tokens, batch.wavelength, batch.valid)
                mse[k] = _per_sample_mse(pred, batch.target, batch.loss_mask,
                                         batch.pixel_valid).double().cpu().numpy()
                out[:, -1] *= torch.isfinite(pred.float()).flatten(1).all(dim=1).cpu().numpy()
                predicted = batch.to_tokenizer_units(pred.float()).cpu().numpy()
            loss_mask = batch.loss_mask.cpu().numpy()
            chi2[k] = [masked_chi2(t, predicted[b, :t.n_tokens], loss_mask[b, :t.n_tokens])
                       for b, t in enumerate(tokens)]
        out[:, width] = _mean_over_masks(mse)
        out[:, width + 1] = _mean_over_masks(chi2)
        return out

    def accept(row: np.ndarray) -> bool:
        return bool(row[-1] > 0 and np.all(np.isfinite(row[:width])))

    rows, kept = _run(inputs, compute, batch_size, progress, desc, accept=accept)
    table = np.stack(rows) if rows else np.zeros((0, width + 3))
    return _Pass(table[:, :width].astype(np.float32), table[:, width], table[:, width + 1], kept, inputs,
                 torch_dtype)


def _embeddings(spectra, net, batch_size, dtype, progress, format, on_error, workers):
    """``(vectors (N, D) float32, kept items, inputs, autocast dtype)``."""
    done = _forward(spectra, net, batch_size, dtype, progress, format, on_error, workers)
    return done.vectors, done.items, done.inputs, done.torch_dtype


# ---------------------------------------------------------------------------------------
# embeddings


def embed(
    spectra: Any,
    model: str | os.PathLike | OmniSpectra = "default",
    batch_size: int = 32,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = "auto",
    progress: bool | None = None,
    return_ids: bool = False,
    format: str | None = None,
    on_error: str = "raise",
    as_table: bool = False,
    workers: int | None = None,
):
    """Embed spectra with a pretrained OmniSpectra encoder.

    The embedding of a spectrum is the mean over its valid tokens of the encoder's last
    hidden states (:meth:`omnispectra.model.OmniSpectra.embed`), computed on the
    spectrum's native pixel grid.

    Parameters
    ----------
    spectra : spectrum, path, or iterable of them
        *One spectrum* - a 1-D specutils ``Spectrum``/``Spectrum1D``, a
        ``(wavelength, flux[, ivar])`` tuple of arrays (wavelength in Angstrom or a
        Quantity), or :class:`~omnispectra.tokenizer.Tokens` - or *many*: a
        ``SpectrumList`` (what :func:`omnispectra.io.read` returns), a list/iterable of
        spectra, a file path (``str`` or `~pathlib.Path`, read with
        :func:`omnispectra.io.read`; a file holding several spectra contributes several
        rows), a directory (every spectrum file in it, see
        :data:`omnispectra.inputs.SPECTRUM_FILE_SUFFIXES`), a glob pattern, a 2-D
        ``Spectrum`` (one row per spectrum) or a list mixing all of these.
    model : str, path-like or OmniSpectra
        ``"default"`` (the bundled weights), a registry name, a weights file, or a model.
    batch_size : int
        Spectra per forward pass; spectra of similar length are batched together.
    device : str or torch.device, optional
        Default: the model's device for an instance, else CUDA when available.
    dtype : torch.dtype or str, optional
        ``"auto"`` (default): bfloat16 autocast on CUDA GPUs, float32 on CPUs (so CPU
        results do not depend on the machine; :func:`~omnispectra.runtime.default_dtype`);
        ``torch.bfloat16``/``"bf16"``, ``torch.float16`` or ``"float32"`` force one. The
        dtype used is in a table's ``meta['DTYPE']``.
    progress : bool or tqdm-like, optional
        Show a progress bar on stderr (total: the number of spectra when it is known,
        updated after every batch); default only when stderr is a terminal and more
        than one spectrum is given. An object with ``update(n)`` (a ``tqdm`` bar) is
        updated instead (its ``total`` set when unset) and left open.
    return_ids : bool
        Also return the spectrum ids (``meta['id']``, else ``"FILESTEM:k"`` for files and
        the input position for in-memory spectra; made unique, see :mod:`omnispectra.inputs`).
    format : str, optional
        Reader to use for paths instead of auto-detection.
    on_error : {"raise", "skip", "warn"}
        What an input that cannot be read, tokenized or embedded does (see the module
        docstring). With ``"skip"``/``"warn"`` use ``as_table=True`` or
        ``return_ids=True`` to know which rows survived.
    as_table : bool
        Return an `~astropy.table.Table` (:func:`omnispectra.results.embeddings_table`)
        with columns ``id``, ``source_file``, ``survey`` and ``embedding`` (one vector
        per row) and ``meta`` holding the provenance (:func:`omnispectra.results.provenance_meta`:
        package version, model name and sha256, ``DTYPE`` actually used, ``DEVICE``),
        the counts (``n_inputs == n_read + n_skipped``) and ``skipped``. Write it with
        :func:`omnispectra.results.write_table` (ECSV, FITS or HDF5).
    workers : int, optional
        Threads reading and tokenizing files ahead of the model, so reading overlaps
        with the model (default 1 when files are read; 0 reads in the calling thread).
        Order is kept (see :class:`omnispectra.inputs.Inputs`).

    Returns
    -------
    embeddings : ndarray, float32, or Table
        Shape ``(D,)`` for one spectrum, ``(N, D)`` otherwise (``D`` is the model's width,
        ``model.config.dim``: 256 for the bundled model), rows in input order (a path is
        always "many", even when its file holds one spectrum); a Table with
        ``as_table=True``.
    ids : str or list of str
        Only with ``return_ids=True`` (and not ``as_table``).

    Raises
    ------
    SpectrumTypeError, InvalidSpectrumError, UnitsError
        An input is not a spectrum or cannot be tokenized (the message names it); with
        ``on_error="skip"``/``"warn"`` only when the input is one in-memory spectrum.
    SpectrumFormatError
        A path cannot be read.
    NonFiniteOutputError
        The embedding of an input is not finite.
    CheckpointError
        The model cannot be loaded.

    Examples
    --------
    >>> import omnispectra
    >>> from omnispectra.examples import example_paths
    >>> vectors, ids = omnispectra.embed(example_paths(), return_ids=True)  # doctest: +SKIP
    >>> vectors.shape  # doctest: +SKIP
    (3, 256)
    """
    net = resolve_model(model, device)
    vectors, kept, inputs, torch_dtype = _embeddings(spectra, net, batch_size, dtype, progress,
                                                     format, on_error, workers)
    ids = [item.id for item in kept]
    if inputs.single and not kept:  # one spectrum: nothing left to return
        raise inputs.skipped[0].error
    if as_table:
        from .results import embeddings_table

        sources = _item_table(kept)
        return embeddings_table(ids, vectors, source_files=sources["source_file"], surveys=sources["survey"],
                                meta=_meta(net, inputs, torch_dtype, kind="embeddings"))
    if inputs.single:
        vectors, ids = vectors[0], ids[0]
    return (vectors, ids) if return_ids else vectors


def _item_table(items: list[InputItem]):
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


# ---------------------------------------------------------------------------------------
# anomaly scores


def _per_sample_mse(pred, target, loss_mask, pixel_valid):
    """Masked reconstruction MSE per sample (as :func:`~omnispectra.model.masked_reconstruction_loss`)."""
    import torch

    weight = loss_mask[..., None].expand_as(target).to(torch.float32).clone()
    weight[..., 2:] *= pixel_valid.to(torch.float32)
    err = (pred.float() - target.float()) ** 2
    total = weight.sum(dim=(1, 2))
    mse = (err * weight).sum(dim=(1, 2)) / total.clamp_min(1.0)
    return torch.where(total > 0, mse, torch.full_like(mse, float("nan")))


def anomaly_score(
    spectra: Any,
    model: str | os.PathLike | OmniSpectra = "default",
    n_masks: int = 8,
    seed: int = 0,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    progress: bool | None = None,
    return_ids: bool = False,
    format: str | None = None,
    on_error: str = "raise",
    workers: int | None = None,
    as_table: bool = False,
):
    """Outlier score: the mean masked-reconstruction error over several random masks.

    Each spectrum is masked ``n_masks`` times with the pretraining chunk masking
    (:func:`~omnispectra.masking.chunk_mask`, drawn from
    :func:`~omnispectra.masking.mask_rng` ``(seed, k, 0)`` for ``k < n_masks``, so a
    spectrum's score does not depend on the other inputs) and the model reconstructs the
    masked chunks. The score is the mean squared error over the masked, valid elements
    in the collator's units (each masked spectrum re-standardized over its visible valid
    pixels, :mod:`omnispectra.collate`; plain MSE, not the Huber training loss), averaged
    over the masks: spectra the model reconstructs
    badly are unlike its training data (in the spirit of Spender's outlier detection,
    Liang et al. 2023). This is not in the OmniSpectra paper; it is only as good as the
    pretrained model.

    Parameters
    ----------
    spectra, model, batch_size, device, dtype, progress, return_ids, format, on_error, workers
        As for :func:`embed` (with ``on_error="skip"``, ``return_ids=True`` says which
        inputs were scored).
    n_masks : int
        Masks averaged per spectrum.
    seed : int
        Seed of the masks.
    as_table : bool
        Return an `~astropy.table.Table` (:func:`omnispectra.results.anomaly_table`):
        ``id``, ``source_file``, ``survey``, ``anomaly_score``, ``anomaly`` (the statistic
        of :func:`anomaly_statistic`, from the same masks) and ``flag`` (input checks,
        ``ANOMALY`` against the card's threshold ``meta['ANOMP99']``, ``NONFINITE`` for a
        NaN score), with the provenance, ``NMASKS``, ``MASKSEED``, counts and ``skipped``
        in ``meta`` (as :func:`embed`).

    Returns
    -------
    scores : float or ndarray of shape (N,), float64, or Table
        NaN for a spectrum too short to be masked (fewer than 4 tokens). A model output
        that is not finite is never averaged in: that input raises
        :class:`~omnispectra.exceptions.NonFiniteOutputError` (or is skipped).
    ids : str or list of str
        Only with ``return_ids=True``.
    """
    net = resolve_model(model, device)
    done = _forward(spectra, net, batch_size, dtype, progress, format, on_error, workers, embed=False,
                    masks=_check_masks(n_masks, seed), desc="scoring")
    scores, ids = done.mse, [item.id for item in done.items]
    if done.inputs.single and not done.items:
        raise done.inputs.skipped[0].error
    if as_table:
        from .flags import anomaly_flags, finite_flags
        from .results import anomaly_table

        table = anomaly_table(ids, scores, n_masks=n_masks, seed=seed,
                              meta=_meta(net, done.inputs, torch_dtype=done.torch_dtype, kind="anomaly"))
        sources = _item_table(done.items)
        for k, name in enumerate(("source_file", "survey")):
            table.add_column(sources[name], index=1 + k)
        table["anomaly"] = done.chi2
        table["anomaly"].description = ANOMALY_DESCRIPTION
        threshold = anomaly_threshold(net)
        table["flag"] = (_quality_flags(done.items) | finite_flags(scores)
                         | anomaly_flags(done.chi2, threshold))
        table["flag"].description = FLAG_DESCRIPTION
        table.meta["ANOMP99"] = float("nan") if threshold is None else threshold
        return table
    if done.inputs.single:
        scores, ids = float(scores[0]), ids[0]
    return (scores, ids) if return_ids else scores


def _check_masks(n_masks: Any, seed: Any) -> _Masks:
    if not (isinstance(n_masks, numbers.Integral) and n_masks >= 1):
        raise ValueError(f"n_masks must be a positive integer, got {n_masks!r}")
    return _Masks(int(n_masks), int(seed))


#: Model-error floor of :func:`masked_chi2`, in units of the spectrum's own standard
#: deviation (the tokenizer's normalized flux): a pixel's variance is ``1 / ivar`` plus
#: ``(ANOMALY_MODEL_FLOOR * scale) ** 2``, so that high-S/N spectra, which no model
#: reconstructs to their noise, are not all anomalous.
ANOMALY_MODEL_FLOOR = 0.1

#: Description of the ``anomaly`` column of the predictor tables.
ANOMALY_DESCRIPTION = ("anomaly statistic: ivar-weighted chi-square per pixel of the masked-chunk "
                       "reconstruction (omnispectra.api.anomaly_statistic)")

#: Description of the ``flag`` column (the bits are in omnispectra.flags).
FLAG_DESCRIPTION = "warning bitmask (omnispectra.flags.Flag); 0 means use it"


def masked_chi2(tokens: Tokens, predicted: np.ndarray, token_mask: np.ndarray,
                floor: float = ANOMALY_MODEL_FLOOR) -> float:
    """Chi-square per pixel of a reconstruction over the masked chunks of one spectrum.

    ``mean over masked valid pixels of r**2 / (1 / ivar_n + floor**2)``, where ``r`` is the
    reconstruction minus the observed flux and ``ivar_n`` the inverse variance, both in the
    tokenizer's normalized units (flux / scale; the ``scale`` cancels, so this is the
    physical chi-square with a model-error floor of ``floor * scale``). Each pixel counts
    once per patch that holds it (patches overlap by half).

    Parameters
    ----------
    tokens : Tokens
        Made with ``meta['pixel_ivar']`` (as the api's inputs are when they are measured).
    predicted : ndarray (T, p + 2)
        The reconstruction in the units of ``tokens.tokens``.
    token_mask : ndarray (T,) of bool
        Tokens hidden from the model (and valid).

    Returns
    -------
    float
        NaN without uncertainties (``pixel_ivar`` None) or without masked valid pixels.
    """
    ivar = (tokens.meta or {}).get("pixel_ivar")
    if ivar is None:
        return float("nan")
    use = np.asarray(token_mask, dtype=bool)[:, None] & tokens.pixel_valid & (ivar > 0)
    if not use.any():
        return float("nan")
    resid = np.asarray(predicted, dtype=np.float64)[:, 2:] - tokens.tokens[:, 2:]
    weight = ivar / (1.0 + floor ** 2 * ivar)
    return float(np.mean((resid ** 2 * weight)[use]))


def anomaly_statistic(
    spectra: Any,
    model: str | os.PathLike | OmniSpectra = "default",
    n_masks: int = ANOMALY_N_MASKS,
    seed: int = 0,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    progress: bool | None = None,
    format: str | None = None,
    on_error: str = "raise",
    workers: int | None = None,
) -> tuple[np.ndarray, list[str]]:
    """The anomaly statistic behind the ``ANOMALY`` flag, one value per spectrum.

    Each spectrum is masked ``n_masks`` times with the pretraining chunk masks (as
    :func:`anomaly_score`: drawn from ``mask_rng(seed, k, 0)``, so a value does not depend
    on the other inputs); the statistic is the mean over the masks of :func:`masked_chi2`,
    the inverse-variance weighted chi-square per pixel of the reconstructed masked chunks
    (with a model-error floor of :data:`ANOMALY_MODEL_FLOOR` times the spectrum's standard
    deviation). Unlike the MSE of :func:`anomaly_score`, which grows with the noise, a noisy
    but ordinary spectrum has a statistic near 1. Its name is
    :data:`omnispectra.flags.ANOMALY_STATISTIC`; the encoder card's ``anomaly.p99`` (the
    99th percentile over validation spectra, written by ``scripts/train_predictors.py``
    with this function and its defaults) is the flag's threshold
    (:func:`anomaly_threshold`).

    Parameters
    ----------
    spectra, model, batch_size, device, dtype, progress, format, on_error, workers
        As for :func:`embed`.
    n_masks, seed
        As for :func:`anomaly_score`.

    Returns
    -------
    statistic : ndarray (N,), float64
        NaN for a spectrum without uncertainties (no ivar) or too short to be masked.
    ids : list of str
        The ids of the rows (inputs skipped per ``on_error`` are left out).
    """
    net = resolve_model(model, device)
    done = _forward(spectra, net, batch_size, dtype, progress, format, on_error, workers, embed=False,
                    masks=_check_masks(n_masks, seed), desc="scoring")
    if done.inputs.single and not done.items:
        raise done.inputs.skipped[0].error
    return done.chi2, [item.id for item in done.items]


def anomaly_threshold(model: str | os.PathLike | OmniSpectra = "default") -> float | None:
    """The ``ANOMALY`` threshold stored with a model, or None (then the bit is never set).

    The card's (or weights file's) ``anomaly`` entry ``{"statistic", "p99", "n_validation"}``
    (:func:`omnispectra.runtime.card_entry`); used only when its ``statistic`` is
    :data:`omnispectra.flags.ANOMALY_STATISTIC`.
    """
    from .flags import ANOMALY_STATISTIC
    from .runtime import card_entry

    entry = card_entry(resolve_model(model, "cpu" if isinstance(model, (str, os.PathLike)) else None),
                       "anomaly")
    if not isinstance(entry, dict):
        return None
    if entry.get("statistic") != ANOMALY_STATISTIC:
        logger.warning("the model card's anomaly threshold is for statistic %r, not %r; ANOMALY is not set",
                       entry.get("statistic"), ANOMALY_STATISTIC)
        return None
    try:
        value = float(entry["p99"])
    except (KeyError, TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def _quality_flags(items: list[InputItem]) -> np.ndarray:
    """``OUTSIDE_SUPPORT``/``FEW_TOKENS``/``LOW_SN`` of measured inputs."""
    from .flags import input_flags

    return input_flags([(item.prepared.meta or {}).get("quality") for item in items])


def _mean_over_masks(scores: np.ndarray) -> np.ndarray:
    """Mean of the scored masks per spectrum (axis 0); NaN where no mask could be scored."""
    valid = ~np.isnan(scores)
    total = np.where(valid, scores, 0.0).sum(0)
    count = valid.sum(0)
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


# ---------------------------------------------------------------------------------------
# reconstruction of one spectrum


@dataclass
class Reconstruction:
    """A model's reconstruction of one spectrum on its native pixel grid.

    Attributes
    ----------
    id : str
        The spectrum's id.
    wavelength : ndarray (n_pixels,)
        Wavelength of every pixel in Angstrom, increasing.
    flux : ndarray (n_pixels,)
        The observed flux in the input's units; NaN on invalid pixels.
    reconstruction : ndarray (n_pixels,)
        The model's prediction for every pixel in the same units (overlapping patches
        averaged, per-spectrum normalization undone with
        :meth:`omnispectra.tokenizer.Tokens.pixel_flux`).
    pixel_masked : ndarray (n_pixels,) of bool
        Pixels covered by a masked token (hidden from the model).
    token_mask : ndarray (T,) of bool
        The chunk mask over tokens (all False for ``mask=False``).
    token_wavelength : ndarray (T,)
        Mean wavelength of each token.
    mse : float
        Mean squared error over the masked valid elements in the collator's units (the
        spectrum re-standardized over its visible valid pixels); over all valid elements
        in tokenizer units when nothing is masked.
    tokens : Tokens
        The input tokens.
    predicted_tokens : ndarray (T, p + 2)
        The reconstruction head's output in the units of ``tokens.tokens`` (the collator's
        re-standardization undone with :meth:`omnispectra.collate.Batch.to_tokenizer_units`).
    flux_unit : str or None
        Unit of ``flux`` and ``reconstruction`` when the input had one.
    """

    id: str
    wavelength: np.ndarray
    flux: np.ndarray
    reconstruction: np.ndarray
    pixel_masked: np.ndarray
    token_mask: np.ndarray
    token_wavelength: np.ndarray
    mse: float
    tokens: Tokens = field(repr=False)
    predicted_tokens: np.ndarray = field(repr=False)
    flux_unit: str | None = None

    def masked_intervals(self) -> list[tuple[float, float]]:
        """``(start, end)`` wavelengths in Angstrom of each contiguous masked region."""
        m = self.pixel_masked.astype(np.int8)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], m, [0]])))
        return [(float(self.wavelength[a]), float(self.wavelength[b - 1]))
                for a, b in zip(edges[::2], edges[1::2], strict=True)]

    def to_table(self, meta: dict[str, Any] | None = None):
        """This reconstruction as a one-row `~astropy.table.Table`.

        :func:`omnispectra.results.reconstruction_table`: ``id``, ``mse`` and per-pixel
        array columns ``wavelength`` (Angstrom), ``flux`` and ``reconstruction`` (in the
        input's flux unit), ``pixel_masked``, ``token_wavelength``, ``token_mask``;
        ``meta`` (e.g. :func:`omnispectra.results.provenance_meta`) is stored with it.
        """
        from .results import reconstruction_table

        return reconstruction_table(self, meta=meta)


def _single_spectrum(spectrum: Any, net: OmniSpectra, format: str | None) -> InputItem:
    if isinstance(spectrum, Tokens):
        raise SpectrumTypeError(
            "reconstruct() needs the spectrum itself (its pixel wavelengths), not Tokens")
    found = list(_inputs(spectrum, net, format, "raise", workers=0))
    if len(found) != 1:
        raise SpectrumTypeError(
            f"reconstruct() takes one spectrum; this input holds {len(found)}. Read the file "
            "with omnispectra.io.read() and pass one of its spectra")
    return found[0]


def reconstruct(
    spectrum: Any,
    model: str | os.PathLike | OmniSpectra = "default",
    mask: bool | np.ndarray | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    format: str | None = None,
) -> Reconstruction:
    """Mask chunks of a spectrum and let the model fill them in.

    Parameters
    ----------
    spectrum : Spectrum, tuple or path
        One spectrum: a 1-D specutils ``Spectrum``, a ``(wavelength, flux[, ivar])``
        tuple, or a file holding exactly one spectrum.
    model : str, path-like or OmniSpectra
        As for :func:`embed`.
    mask : None, bool or ndarray of bool
        ``None``/``True``: draw the pretraining chunk mask from
        :func:`~omnispectra.masking.mask_rng` ``(seed, 0, 0)``; ``False``: mask nothing
        (the model sees the whole spectrum); an array of shape ``(T,)``: this token mask.
    seed : int
        Seed of the drawn mask.
    device, dtype, format
        As for :func:`embed`.

    Returns
    -------
    Reconstruction
        See :func:`omnispectra.plotting.plot_reconstruction` to draw it.
    """
    from .collate import Sample, collate
    from .masking import chunk_mask, mask_rng

    net = resolve_model(model, device)
    item = _single_spectrum(spectrum, net, format)
    sid, obj, tok = item.id, item.spectrum, item.prepared
    dev = model_device(net)
    torch_dtype = resolve_dtype(dtype, dev)
    cfg = net.config
    data = spectrum_data(*obj) if isinstance(obj, tuple) else spectrum_data(obj)
    wave, flux, bad = data.wavelength, data.flux, data.bad
    n_tok = tok.n_tokens
    if mask is None or mask is True:
        token_mask = chunk_mask(n_tok, mask_rng(seed, 0, 0), cfg.patch_size, cfg.mask_ratio)
    elif mask is False:
        token_mask = np.zeros(n_tok, dtype=bool)
    else:
        token_mask = np.asarray(mask)
        if token_mask.shape != (n_tok,) or token_mask.dtype != bool:
            raise InvalidSpectrumError(
                f"mask must be a boolean array of shape ({n_tok},) (one value per token), got "
                f"{token_mask.dtype} array of shape {token_mask.shape}")
    batch = collate([Sample(tok, token_mask)]).to(dev)
    loss_mask = batch.loss_mask if token_mask.any() else batch.valid
    with inference(net, torch_dtype):
        pred = net.reconstruct(batch.tokens, batch.wavelength, batch.valid)
        mse = float(_per_sample_mse(pred, batch.target, loss_mask, batch.pixel_valid)[0])
    # undo the collator's rescaling
    predicted = batch.to_tokenizer_units(pred.float())[0, :n_tok].cpu().numpy()
    if not np.all(np.isfinite(predicted)):
        raise NonFiniteOutputError(f"spectrum {sid!r}: the model's reconstruction is not finite")

    index = patch_index(tok.n_pixels, tok.patch_size, tok.stride)
    pixel_masked = np.zeros(tok.n_pixels, dtype=bool)
    covered = index[token_mask]
    pixel_masked[covered[covered < tok.n_pixels]] = True
    unit = getattr(getattr(obj, "flux", None), "unit", None)
    return Reconstruction(
        id=sid,
        wavelength=wave,
        flux=np.where(bad, np.nan, flux),
        reconstruction=tok.pixel_flux(predicted, physical=True),
        pixel_masked=pixel_masked,
        token_mask=token_mask,
        token_wavelength=tok.wavelength,
        mse=mse,
        tokens=tok,
        predicted_tokens=predicted,
        flux_unit=None if unit is None else unit.to_string(),
    )


# ---------------------------------------------------------------------------------------
# token summaries (``omnispectra tokenize``)


def token_summary(
    paths: Iterable[str | Path] | Any, format: str | None = None, preset: str | None = None,
    on_error: str = "skip",
) -> tuple[list[str], list[tuple[str, str]]]:
    """Read spectrum files, tokenize every spectrum and describe each in one line.

    Parameters
    ----------
    paths : iterable of path-like, or spectra
        Spectrum files, directories or anything :func:`embed` accepts.
    format : str, optional
        Force a reader identifier instead of auto-detection.
    preset : str, optional
        Also embed each spectrum with a freshly initialized (untrained, seeded) encoder
        of this preset and report the embedding's shape.
    on_error : {"skip", "warn", "raise"}
        What an input that cannot be read or tokenized does (default: skip it and list
        it in ``failures``).

    Returns
    -------
    rows : list of str
        A header line and one line per spectrum.
    failures : list of (source, reason)
        Files or spectra that could not be read or tokenized (source is the file name
        with its suffix, followed by the spectrum's id in brackets for a spectrum).
    """
    model = None
    if preset is not None:
        import torch

        from .collate import collate
        from .model import OmniSpectra, OmniSpectraConfig

        torch.manual_seed(0)
        model = OmniSpectra(OmniSpectraConfig.from_preset(preset)).eval()
    header = f"{'id':<44} {'survey':<11} {'pixels':>7} {'wavelength [A]':>17} {'tokens':>6} {'valid':>6}"
    if model is not None:
        header += f"  embedding ({preset}, untrained)"
    rows = [header]
    if isinstance(paths, (list, tuple)) and not paths:
        return rows, []
    from .tokenizer import PATCH_SIZE, STRIDE

    patch, stride = (PATCH_SIZE, STRIDE) if model is None else (model.config.patch_size, model.config.stride)
    inputs = Inputs(paths, format=format, on_error=on_error,
                    prepare=lambda item: _tokens_for(item, patch, stride, None))
    for item in inputs:
        tok = item.prepared
        wave = spectrum_data(*item.spectrum).wavelength if isinstance(item.spectrum, tuple) else (
            None if isinstance(item.spectrum, Tokens) else spectrum_data(item.spectrum).wavelength)
        span = f"{wave[0]:>8.1f}-{wave[-1]:<8.1f}" if wave is not None else f"{'?':>17}"
        line = (f"{item.id[-44:]:<44} {(item.survey or '?'):<11} {tok.n_pixels:>7} "
                f"{span} {tok.n_tokens:>6} {int(tok.valid.sum()):>6}")
        if model is not None:
            with torch.no_grad():
                batch = collate([tok])
                emb = model.embed(batch.tokens, batch.wavelength, batch.valid)[0].numpy()
            line += f"  shape {emb.shape}, norm {np.linalg.norm(emb):.2f}"
        rows.append(line)
    failures = [(s.source if s.id is None else f"{s.source} [{s.id}]", s.reason) for s in inputs.skipped]
    return rows, failures


# ---------------------------------------------------------------------------------------
# predictors: bundled probes on the bundled encoder (see omnispectra.probes)

#: File names of the probes shipped in ``omnispectra/data`` (made by scripts/train_predictors.py).
PROBE_FILES = {
    "source_class": "probe-source-class.safetensors",
    "stellar_params": "probe-stellar-params.safetensors",
    "redshift": "probe-redshift.safetensors",
}


def bundled_probe_path(task: str) -> Path:
    """Where the bundled probe of ``task`` (a key of :data:`PROBE_FILES`) lives (may be absent)."""
    from .pretrained import bundled_weights_path

    if task not in PROBE_FILES:
        raise ValueError(f"unknown probe task {task!r}; known: {sorted(PROBE_FILES)}")
    return bundled_weights_path().parent / PROBE_FILES[task]


def resolve_probe(probe: Any, task: str):
    """A :class:`~omnispectra.probes.Probe` from ``None`` (the bundled probe of ``task``), a path
    or an instance."""
    from .probes import Probe, load_probe

    if isinstance(probe, Probe):
        return probe
    if probe is None:
        path = bundled_probe_path(task)
        if not path.is_file():
            raise CheckpointError(
                f"the bundled {task.replace('_', ' ')} probe ({path.name}) is missing from this "
                f"installation ({path.parent}); train one with scripts/train_predictors.py or pass "
                "probe=PATH")
        probe = path
    if isinstance(probe, (str, os.PathLike)):
        loaded = load_probe(probe)
        loaded.info.setdefault("name", Path(probe).name)  # the provenance's PROBE (a name, no folder)
        return loaded
    raise CheckpointError(f"probe must be a path or an omnispectra.probes.Probe, got {type(probe).__name__}")


def _checked_probe(probe: Any, task: str, net: OmniSpectra):
    """:func:`resolve_probe` of ``task``, checked to be of the task's kind and to belong to ``net``."""
    head = resolve_probe(probe, task)
    expected_kind = "classification" if task == "source_class" else "regression"
    if head.kind != expected_kind:
        raise CheckpointError(f"the probe is a {head.kind} probe; {task} needs a {expected_kind} probe")
    head.check_encoder(net)
    return head


def _probe_meta(head: Any, prefix: str) -> dict[str, str]:
    """Name and tensor sha256 of a second probe in a table's meta (``<prefix>PROBE``, ``<prefix>PROBSHA``)."""
    from .probes import encoder_fingerprint

    return {f"{prefix}PROBE": Path(str(head.info.get("name", ""))).name,
            f"{prefix}PROBSHA": encoder_fingerprint(head) if hasattr(head, "state_dict") else ""}


@dataclass
class _Run:
    """Embeddings (and anomaly statistics) of the inputs that survived, with their table columns."""

    net: Any
    done: _Pass
    threshold: float | None
    anomaly: np.ndarray | None   # (N,) statistic, None when not computed

    @property
    def items(self) -> list[InputItem]:
        return self.done.items

    def keep(self, ok: np.ndarray, what: str) -> None:
        """Reject the rows where ``ok`` is False (their ``what`` is not finite)."""
        inputs = self.done.inputs
        for item in (item for item, good in zip(self.items, ok, strict=True) if not good):
            inputs.reject(item, NonFiniteOutputError(f"spectrum {item.id!r}: the {what} is not finite"))
        if inputs.single and (not ok.all() or not self.items):
            raise inputs.skipped[-1].error
        d = self.done
        items = [item for item, good in zip(d.items, ok, strict=True) if good]
        self.done = _Pass(d.vectors[ok], d.mse[ok], d.chi2[ok], items, d.inputs, d.torch_dtype)
        if self.anomaly is not None:
            self.anomaly = self.anomaly[ok]

    def flags(self) -> np.ndarray:
        """The input checks and ``ANOMALY`` of every row."""
        from .flags import anomaly_flags

        out = _quality_flags(self.items)
        if self.anomaly is not None:
            out |= anomaly_flags(self.anomaly, self.threshold)
        return out

    def table(self, head: Any):
        """``id``, ``source_file``, ``survey`` and the provenance (``head``'s probe) in ``meta``."""
        table = _item_table(self.items)
        table.meta.update(_meta(self.net, self.done.inputs, self.done.torch_dtype, probe=head,
                                kind="predictions"))
        table.meta["ANOMP99"] = float("nan") if self.threshold is None else self.threshold
        return table


def _embed_for_probes(spectra, net, batch_size, dtype, progress, format, on_error, workers,
                      anomaly: bool = False) -> _Run:
    """Embed measured inputs; the anomaly statistic too when the model has a threshold (or ``anomaly``)."""
    threshold = anomaly_threshold(net)
    masks = _Masks(ANOMALY_N_MASKS) if (anomaly or threshold is not None) else None
    done = _forward(spectra, net, batch_size, dtype, progress, format, on_error, workers, masks=masks,
                    measure=True)
    run = _Run(net, done, threshold, done.chi2 if masks is not None else None)
    if done.inputs.single and not done.items:
        raise done.inputs.skipped[-1].error
    return run


def _class_columns(head: Any, run: _Run) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(classes, calibrated probabilities (N, K), DISAGREEMENT flags)``; rows with a
    non-finite probability are rejected first (never a class from NaN)."""
    from .flags import class_disagreement_flags

    vectors = run.done.vectors
    prob = np.asarray(head.predict(vectors)) if len(vectors) else np.zeros((0, len(head.names)))
    ok = np.all(np.isfinite(prob), axis=1)
    if not ok.all():
        run.keep(ok, "source class probe's output")
        prob, vectors = prob[ok], vectors[ok]
    classes = [head.names[k] for k in np.argmax(prob, axis=1)] if len(prob) else []
    disagree = None
    if getattr(head, "members", 1) > 1 and len(vectors):
        disagree = class_disagreement_flags(head.probabilities(head.member_outputs(vectors)))
    return classes, prob, (np.zeros(len(prob), np.int64) if disagree is None else disagree)


def _add_class_columns(table: Any, names: list[str], classes: list[str], prob: np.ndarray) -> None:
    table["class"] = np.asarray(classes, dtype=str) if classes else np.zeros(0, dtype="U6")
    table["class"].description = "source class (largest calibrated probability)"
    for k, name in enumerate(names):
        table[f"prob_{name}"] = prob[:, k].astype(np.float32)
        table[f"prob_{name}"].description = f"calibrated probability that the source is a {name}"


def _stellar_columns(head: Any, run: _Run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(values (N, k), 1-sigma errors (N, k), NONFINITE|IMPOSSIBLE_VALUE flags, and
    OUTSIDE_SUPPORT outside the probe's own training range)`` in float32."""
    from .flags import finite_flags, probe_support_flags, range_flags

    vectors = run.done.vectors

    if head.members < 2:
        logger.warning("the stellar-parameter probe is a single head (no ensemble): uncertainties are NaN")
    if len(vectors):
        values, errors = head.predict_with_spread(vectors)
    else:
        values = errors = np.zeros((0, len(head.names)))
    flags = finite_flags(values) | range_flags({name: values[:, k] for k, name in enumerate(head.names)})
    tokens = [item.prepared for item in run.items]
    flags |= probe_support_flags([tok.wavelength[tok.valid] for tok in tokens],
                                 (head.info or {}).get("wavelength_support"))
    return values.astype(np.float32), errors.astype(np.float32), flags


def _add_stellar_columns(table: Any, names: list[str], values: np.ndarray, errors: np.ndarray) -> None:
    from .results import quantity_unit

    descriptions = {"teff": "effective temperature", "logg": "log10 surface gravity [cm s^-2]",
                    "fe_h": "iron abundance [Fe/H] (dex)"}
    for k, name in enumerate(names):
        unit = quantity_unit(name)
        table[name] = values[:, k]
        table[name].description = descriptions.get(name, name)
        table[f"{name}_err"] = errors[:, k]
        table[f"{name}_err"].description = f"1-sigma uncertainty of {name} (calibrated ensemble spread)"
        if unit is not None:
            table[name].unit = table[f"{name}_err"].unit = unit


def _template_fits(fitter: Any, items: list[InputItem]) -> list[Any]:
    """One full template fit per row (:meth:`omnispectra.redshift.RedshiftFitter.fit`); its
    ``per_class`` serves whichever class is chosen afterwards."""
    from .flags import Flag
    from .redshift import RedshiftResult

    results = []
    for item in items:
        obj = item.spectrum
        if isinstance(obj, Tokens):  # tokens keep no pixel grid to fit
            results.append(RedshiftResult.no_fit(0, Flag.BAD_INPUT))
        else:
            results.append(fitter.fit(*obj) if isinstance(obj, tuple) else fitter.fit(obj))
    return results


def _classes_with_templates(head: Any, prob: np.ndarray,
                            fits: list[Any]) -> tuple[list[str], np.ndarray, str]:
    """``(classes, probabilities, method)``: the probe's probabilities joined with the template
    evidence when the probe stores a combination (:mod:`omnispectra.class_evidence`)."""
    from .class_evidence import combination_of, combine, template_evidence

    params = combination_of(head.calibration, head.names)
    if params is not None and len(prob):
        prob = combine(prob, template_evidence([r.class_chi2 for r in fits], head.names), params)
    method = "network" if params is None else "network+templates"
    return [head.names[k] for k in np.argmax(prob, axis=1)], prob, method


def _redshift_columns(fits: list[Any], classes: list[str]) -> dict[str, Any]:
    """Each row's best solution of its chosen class, as columns.

    Columns ``spectype``, ``z``, ``z_err``, ``deltachi2`` and ``flag`` (the fit's bits,
    ``NONFINITE``, ``IMPOSSIBLE_VALUE``, ``DISAGREEMENT`` between the fit's best class and
    the chosen class, ``WRONG_CLASS`` for a star's radial velocity).
    """
    from .flags import Flag, finite_flags, range_flags, redshift_class_flags

    results = [fit.per_class.get(cls, fit) for fit, cls in zip(fits, classes, strict=True)]
    z = np.asarray([r.z for r in results], dtype=np.float64)
    reported = [r.spectype for r in results]
    best = [r.candidates[0][0] if r.candidates else r.spectype for r in results]
    # LOW_SN is the input check's (which knows placeholder uncertainties), not the fit's
    fit_flags = np.asarray([int(r.flag) & ~int(Flag.LOW_SN) for r in results], dtype=np.int64)
    flags = (fit_flags | finite_flags(z)
             | range_flags({"z": z}) | redshift_class_flags(classes, best, reported))
    return {"spectype": reported, "z": z, "z_err": np.asarray([r.z_err for r in results], dtype=np.float64),
            "deltachi2": np.asarray([r.deltachi2 for r in results], dtype=np.float64), "flag": flags}


def _add_redshift_columns(table: Any, fit: dict[str, Any]) -> None:
    table["spectype"] = np.asarray(fit["spectype"], dtype=str) if len(fit["z"]) else np.zeros(0, dtype="U6")
    table["spectype"].description = "class of the reported template solution (STAR: z is a radial velocity)"
    for name, description in (("z", "redshift of the template fit (STAR: radial velocity, 1 + z Doppler)"),
                              ("z_err", "1-sigma redshift uncertainty (chi-square curvature)"),
                              ("deltachi2", "chi-square of the next distinct solution minus this one's")):
        table[name] = fit[name]
        table[name].description = description


def _add_flag_column(table: Any, flag: np.ndarray) -> None:
    table["flag"] = np.asarray(flag, dtype=np.int64)
    table["flag"].description = FLAG_DESCRIPTION


def _add_anomaly_column(table: Any, run: _Run) -> None:
    table["anomaly"] = run.anomaly if run.anomaly is not None else np.full(len(table), np.nan)
    table["anomaly"].description = ANOMALY_DESCRIPTION


def classify(
    spectra: Any,
    model: str | os.PathLike | OmniSpectra = "default",
    probe: Any = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = "auto",
    progress: bool | None = None,
    format: str | None = None,
    on_error: str = "raise",
    workers: int | None = None,
    full: bool = False,
    stellar_probe: Any = None,
    templates: Any = None,
):
    """Source class (GALAXY, QSO or STAR) of spectra, with calibrated probabilities and a flag.

    A probe on the mean-pooled embedding (paper, *Source Classification*; the bundled one
    is an MLP with one hidden layer of 512, its recipe in the probe file and the model
    card), trained across SDSS/BOSS/eBOSS, 6dFGS, DESI, LAMOST, MaNGA, MILES, APOGEE and
    X-shooter spectra plus engine spectra by ``scripts/train_predictors.py``; its held-out
    scores are in ``omnispectra/data/predictors.json``. The probabilities are
    ``softmax(logits / T)`` with the temperature ``T`` stored in the probe
    (``calibration.temperature``; 1 when absent, :attr:`omnispectra.probes.Probe.temperature`).

    With ``full=True`` the answer is one Redrock-like catalogue row per spectrum: class and
    probabilities, the template redshift (:func:`predict_redshift`), the stellar parameters
    with uncertainties (:func:`predict_stellar_parameters`) for rows classified STAR, the
    anomaly statistic (:func:`anomaly_statistic`) and one ``flag``.

    Parameters
    ----------
    spectra : spectrum, path, or iterable of them
        As for :func:`embed` (files and directories are read with :func:`omnispectra.io.read`).
    model : str, path-like or OmniSpectra
        The encoder; must be the one the probe was trained on (default: the bundled model).
    probe : path or Probe, optional
        The class probe. Default: the probe bundled with the package.
    batch_size, device, dtype, progress, format, on_error, workers
        As for :func:`embed` (with ``full=True``, ``dtype="auto"`` means float32, as for
        :func:`predict_stellar_parameters`).
    full : bool
        Return the full catalogue row (see Returns).
    stellar_probe : path or Probe, optional
        With ``full``: the stellar-parameter probe (default: the bundled one).
    templates : path or RedshiftFitter, optional
        The Redrock template folder (:func:`omnispectra.redshift.resolve_templates`: this,
        else, with ``full``, ``$OMNISPECTRA_TEMPLATES``; the package does not ship them).
        When templates are used (given, or ``full``) and the probe stores a template
        combination, the class joins the probe's probabilities with the chi-square
        differences of the classes' template fits (:mod:`omnispectra.class_evidence`;
        ``meta['CLASSBY']`` says ``network+templates``, else ``network``).

    Returns
    -------
    astropy.table.Table
        One row per spectrum that was classified, in input order: ``id``,
        ``source_file``, ``survey``, ``class``, ``prob_<CLASS>`` for every class of the
        probe (``prob_GALAXY``, ``prob_QSO``, ``prob_STAR``) and ``flag`` (bits of
        :class:`omnispectra.flags.Flag`: ``OUTSIDE_SUPPORT``, ``FEW_TOKENS``, ``LOW_SN``,
        ``DISAGREEMENT`` between ensemble members, ``ANOMALY``; ``flag == 0`` means use it).
        With ``full=True`` also ``spectype``, ``z``, ``z_err``, ``deltachi2``,
        ``teff``/``teff_err`` (K), ``logg``/``logg_err``, ``fe_h``/``fe_h_err`` (NaN
        unless ``class`` is STAR), ``anomaly``, before ``flag`` (see :doc:`/flags` for the
        bits a full row can carry). ``meta`` holds the provenance
        (:func:`omnispectra.results.provenance_meta`), the counts (``n_inputs == n_read +
        n_skipped``) and ``skipped`` (``[{source, reason[, id]}, ...]``).

    Raises
    ------
    CheckpointError
        A bundled probe is missing, or a probe belongs to another encoder.
    TemplatesNotFoundError
        ``full=True`` without Redrock templates (checked before any input is read).
    NonFiniteOutputError
        An embedding or probability is not finite (never turned into a class).
    """
    from .redshift import fitter_for

    net = resolve_model(model, device)
    head = _checked_probe(probe, "source_class", net)
    fitter = fitter_for(templates) if (full or templates is not None) else None
    if full:
        stellar = _checked_probe(stellar_probe, "stellar_params", net)
        if isinstance(dtype, str) and dtype.lower() == "auto":  # stellar parameters need float32
            dtype = "float32"
    run = _embed_for_probes(spectra, net, batch_size, dtype, progress, format, on_error, workers,
                            anomaly=full)
    classes, prob, flag = _class_columns(head, run)
    table = run.table(head)
    method = "network"
    if fitter is not None:
        fits = _template_fits(fitter, run.items)
        classes, prob, method = _classes_with_templates(head, prob, fits)
        table.meta["TEMPLATE"] = fitter_name(fitter)
    table.meta["CLASSBY"] = method
    _add_class_columns(table, head.names, classes, prob)
    flag = flag | run.flags()
    if full:
        from .flags import Flag, not_star_flags

        table.meta.update(_probe_meta(stellar, "S"))
        fit = _redshift_columns(fits, classes)
        _add_redshift_columns(table, fit)
        values, errors, stellar_flag = _stellar_columns(stellar, run)
        star = not_star_flags(classes) == 0
        values[~star], errors[~star] = np.nan, np.nan
        _add_stellar_columns(table, stellar.names, values, errors)
        _add_anomaly_column(table, run)
        # a star's z is its radial velocity by design here: WRONG_CLASS is for predict_redshift
        flag = flag | (fit["flag"] & ~int(Flag.WRONG_CLASS)) | np.where(star, stellar_flag, 0)
    _add_flag_column(table, flag)
    return table


def fitter_name(fitter: Any) -> str:
    """What a result's ``meta['TEMPLATE']`` says of a redshift fitter: its template names."""
    return ",".join(sorted({p.name.removeprefix("redrock:") for p in fitter.prepared}))


def predict_stellar_parameters(
    spectra: Any,
    model: str | os.PathLike | OmniSpectra = "default",
    probe: Any = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = "float32",
    progress: bool | None = None,
    format: str | None = None,
    on_error: str = "raise",
    workers: int | None = None,
    class_probe: Any = None,
):
    """Effective temperature, surface gravity and metallicity of stellar spectra, with errors.

    A probe on the embedding trained on the MILES stars (Teff fitted as log10 Teff; its
    head and recipe are recorded in the probe file); meaningful for stars only, with the
    accuracy recorded in ``omnispectra/data/predictors.json``. The uncertainties are the
    spread of the probe's ensemble members times the calibrated ``sigma_scale`` of the
    probe (:meth:`omnispectra.probes.Probe.predict_with_spread`); a single-head probe
    gives NaN uncertainties (and a logged warning). Parameters as for :func:`classify`,
    except that ``dtype`` defaults to float32 (see :func:`default_dtype`), and
    ``class_probe`` (default: the bundled class probe) says which spectra are stars.

    Returns
    -------
    astropy.table.Table
        ``id``, ``source_file``, ``survey``, ``teff``/``teff_err`` (K),
        ``logg``/``logg_err`` (dex(cm / s2)), ``fe_h``/``fe_h_err`` (dex), all float32,
        and ``flag`` (``NOT_STAR`` where the class probe does not say STAR,
        ``IMPOSSIBLE_VALUE`` outside :data:`omnispectra.flags.PHYSICAL_RANGES`,
        ``NONFINITE``, and the input checks and ``ANOMALY`` of :func:`classify`), input
        order; ``meta`` as for :func:`classify` plus ``CPROBE``/``CPROBSHA``.
    """
    from .flags import not_star_flags

    net = resolve_model(model, device)
    head = _checked_probe(probe, "stellar_params", net)
    classifier = _checked_probe(class_probe, "source_class", net)
    run = _embed_for_probes(spectra, net, batch_size, dtype, progress, format, on_error, workers)
    classes, _, _ = _class_columns(classifier, run)
    values, errors, flag = _stellar_columns(head, run)
    table = run.table(head)
    table.meta.update(_probe_meta(classifier, "C"))
    _add_stellar_columns(table, head.names, values, errors)
    _add_flag_column(table, flag | not_star_flags(classes) | run.flags())
    return table


def predict_redshift(
    spectra: Any,
    model: str | os.PathLike | OmniSpectra = "default",
    probe: Any = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = "auto",
    progress: bool | None = None,
    format: str | None = None,
    on_error: str = "raise",
    workers: int | None = None,
    templates: Any = None,
):
    """Redshift of galaxy and quasar spectra: a full-range template fit, its class chosen by the network.

    Every spectrum is fitted with :class:`omnispectra.redshift.RedshiftFitter` (a
    chi-square scan of the Redrock bases over the full redshift range of each class,
    refined around the best minima). The class (see :func:`classify`: the probe's
    probabilities joined with the template evidence when the probe stores a combination)
    chooses which class's best solution is reported; ``deltachi2`` is the chi-square of
    the next distinct solution minus the reported one's (negative when the templates
    prefer another solution). A spectrum classified STAR gets its radial
    velocity as ``z`` (relativistic Doppler, ``z ~ v / c``) and ``WRONG_CLASS``.

    Parameters
    ----------
    probe : path or Probe, optional
        The class probe (default: the bundled one).
    templates : path or RedshiftFitter, optional
        The Redrock template folder: this, else ``$OMNISPECTRA_TEMPLATES``
        (:func:`omnispectra.redshift.resolve_templates`; the package does not ship them).
    spectra, model, batch_size, device, dtype, progress, format, on_error, workers
        As for :func:`classify`.

    Returns
    -------
    astropy.table.Table
        ``id``, ``source_file``, ``survey``, ``class`` (the probe's, joined with the
        template evidence as in :func:`classify`; ``meta['CLASSBY']``), ``spectype`` (the
        reported solution's), ``z``, ``z_err``, ``deltachi2`` and ``flag`` (the fit's
        ``Z_EDGE``, ``SMALL_DELTACHI2``, ``NEGATIVE_MODEL``, ``LITTLE_COVERAGE``,
        ``BAD_MINFIT``, ``BAD_INPUT``; ``WRONG_CLASS``; ``DISAGREEMENT`` when the fit's best
        class differs from the chosen class or the class ensemble disagrees;
        ``IMPOSSIBLE_VALUE`` for ``z <`` :data:`omnispectra.flags.Z_MIN`; ``NONFINITE`` when
        nothing could be fitted; the input checks ``OUTSIDE_SUPPORT`` and ``FEW_TOKENS``, not
        :data:`omnispectra.flags.REDSHIFT_EXEMPT`). Input order; ``meta``
        as for :func:`classify` plus ``TEMPLATE``.

    Raises
    ------
    TemplatesNotFoundError
        No Redrock templates (checked before any input is read).
    """
    from .flags import REDSHIFT_EXEMPT
    from .redshift import fitter_for

    net = resolve_model(model, device)
    head = _checked_probe(probe, "source_class", net)
    fitter = fitter_for(templates)
    run = _embed_for_probes(spectra, net, batch_size, dtype, progress, format, on_error, workers)
    _, prob, class_flag = _class_columns(head, run)
    fits = _template_fits(fitter, run.items)
    classes, _, method = _classes_with_templates(head, prob, fits)
    fit = _redshift_columns(fits, classes)
    table = run.table(head)
    table.meta["TEMPLATE"] = fitter_name(fitter)
    table.meta["CLASSBY"] = method
    table["class"] = np.asarray(classes, dtype=str) if classes else np.zeros(0, dtype="U6")
    table["class"].description = "source class (probe and templates; chooses the reported solution)"
    _add_redshift_columns(table, fit)
    _add_flag_column(table, (fit["flag"] | class_flag | run.flags()) & ~int(REDSHIFT_EXEMPT))
    return table
