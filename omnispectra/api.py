"""High-level functions: spectra in, embeddings, reconstructions and scores out.

Every function here accepts spectra in the same forms (see :func:`embed`) and a model as
a name, a weights-file path or an :class:`~omnispectra.model.OmniSpectra` instance (see
:func:`omnispectra.pretrained.load_model`). Inference batches spectra of similar length
together (:func:`~omnispectra.collate.length_sorted_batches`) and returns rows in input
order.
"""

from __future__ import annotations

import contextlib
import functools
import numbers
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .exceptions import (
    CheckpointError,
    InvalidSpectrumError,
    OmniSpectraError,
    SpectrumFormatError,
    SpectrumTypeError,
)
from .tokenizer import Tokens, spectrum_arrays, tokenize

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .model import OmniSpectra

__all__ = ["embed", "reconstruct", "anomaly_score", "Reconstruction", "token_summary",
           "classify", "predict_stellar_parameters", "predict_redshift", "bundled_probe_path",
           "default_dtype"]

_POOL_FACTOR = 32  # spectra held (tokenized) at once = _POOL_FACTOR * batch_size


# ---------------------------------------------------------------------------------------
# inputs


def _is_arraylike(obj: Any) -> bool:
    from astropy import units as u

    if isinstance(obj, (np.ndarray, u.Quantity)):
        return True
    return (isinstance(obj, list) and len(obj) > 0 and isinstance(obj[0], numbers.Number))


def _is_spectrum(obj: Any) -> bool:
    from .tokenizer import _is_specutils_spectrum

    return _is_specutils_spectrum(obj)


def _is_single(obj: Any) -> bool:
    """One spectrum: a Spectrum, a Tokens or a ``(wavelength, flux[, ivar])`` tuple."""
    if isinstance(obj, Tokens):
        return True
    if _is_spectrum(obj):
        return getattr(obj.flux, "ndim", 1) == 1
    return isinstance(obj, tuple) and len(obj) in (2, 3) and _is_arraylike(obj[0])


def _spectrum_id(spec: Any, fallback: str) -> str:
    meta = getattr(spec, "meta", None) or {}
    sid = meta.get("id") if isinstance(meta, dict) else None
    return str(sid) if sid is not None else fallback


def _read_path(path: Path, format: str | None) -> Iterator[tuple[str, Any]]:
    """``(id, Spectrum)`` of every spectrum in a file or a directory."""
    from . import io

    if not path.exists():
        raise SpectrumFormatError(f"{path} does not exist")
    if path.is_dir():
        spectra = io.iter_spectra(path, format=format)
    else:
        spectra = io.read(path, format=format)
    for k, spec in enumerate(spectra):
        yield _spectrum_id(spec, f"{path.stem}:{k}"), spec


def _expand(obj: Any, position: int, format: str | None) -> Iterator[tuple[str, Any]]:
    """``(id, spectrum-like)`` for one element of the input (which may hold several)."""
    if _is_single(obj):
        meta = obj.meta if isinstance(obj, Tokens) else None
        fallback = str(position)
        yield (str(meta["id"]) if meta and meta.get("id") is not None else _spectrum_id(obj, fallback)), obj
    elif isinstance(obj, (str, os.PathLike)):
        yield from _read_path(Path(obj), format)
    elif _is_spectrum(obj):  # a 2-D Spectrum: one row per spectrum
        for k in range(obj.flux.shape[0]):
            yield f"{_spectrum_id(obj, str(position))}:{k}", obj[k]
    else:
        raise SpectrumTypeError(
            f"input {position} is a {type(obj).__name__}; expected a specutils Spectrum, a "
            "(wavelength, flux[, ivar]) tuple, omnispectra Tokens, or a file/directory path"
        )


def _iter_inputs(spectra: Any, format: str | None) -> tuple[bool, Iterator[tuple[str, Any]]]:
    """Classify the input as one spectrum or many and iterate ``(id, spectrum-like)``."""
    if _is_single(spectra):
        return True, _expand(spectra, 0, format)
    if isinstance(spectra, (str, os.PathLike)) or _is_spectrum(spectra):
        return False, _expand(spectra, 0, format)
    if isinstance(spectra, (dict, bytes)) or not isinstance(spectra, Iterable):
        raise SpectrumTypeError(
            f"expected a spectrum, a file path or an iterable of them, got {type(spectra).__name__}"
        )

    def generate() -> Iterator[tuple[str, Any]]:
        for position, obj in enumerate(spectra):
            yield from _expand(obj, position, format)

    return False, generate()


def _tokenize_item(sid: str, obj: Any, patch_size: int, stride: int) -> Tokens:
    try:
        if isinstance(obj, Tokens):
            if (obj.patch_size, obj.stride) != (patch_size, stride):
                raise InvalidSpectrumError(
                    f"tokens have patch size/stride {obj.patch_size}/{obj.stride}, the model "
                    f"expects {patch_size}/{stride}")
            return obj
        if isinstance(obj, tuple):
            tok = tokenize(*obj, patch_size=patch_size, stride=stride)
        else:
            tok = tokenize(obj, patch_size=patch_size, stride=stride)
    except OmniSpectraError as err:
        raise _with_context(err, f"spectrum {sid!r}") from err
    tok.meta = {**tok.meta, "id": sid}
    return tok


def _with_context(err: OmniSpectraError, context: str) -> OmniSpectraError:
    try:
        return type(err)(f"{context}: {err}")
    except Exception:  # pragma: no cover - an exception class with another signature
        return err


# ---------------------------------------------------------------------------------------
# model, device, dtype

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16", "half": "float16"}


@functools.lru_cache(maxsize=None)
def _cpu_has_native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (AVX512-BF16 or AMX), Linux only.

    Without it, bf16 autocast is emulated and slower than float32.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_dtype(device: Any = "cpu"):
    """The inference dtype that ``dtype="auto"`` picks on ``device``.

    bfloat16 autocast where the hardware runs it natively (a CUDA GPU with bf16, a CPU with
    AVX512-BF16 or AMX), else float32. It is the default of :func:`embed` and
    :func:`classify`: on 134 real SDSS, LAMOST and MILES spectra the bundled encoder's
    bf16 embeddings have a cosine similarity >= 0.99998 to float32 and the source
    classifier gave the same class for every spectrum (probabilities within 0.0013;
    ``benchmarks/run.py``, section ``bf16``), 1.3-1.6x faster on this project's CPU. The
    regressors (:func:`predict_stellar_parameters`, :func:`predict_redshift`) default to
    float32: on the same MILES stars bf16 moved Teff by 2 K typically but by up to
    180 K, half the predictor's mean error. Pass ``dtype="float32"`` for float32 results.
    """
    import torch

    kind = torch.device(device).type
    if kind == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if kind == "cpu" and _cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def _resolve_dtype(dtype: Any, device: Any = "cpu"):
    """Autocast dtype for ``dtype`` (None = plain float32)."""
    import torch

    if dtype is None:
        return None
    if isinstance(dtype, str):
        if dtype.lower() == "auto":
            dtype = default_dtype(device)
        elif dtype.lower() not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use 'auto' or one of {sorted(_DTYPES)}")
        else:
            dtype = getattr(torch, _DTYPES[dtype.lower()])
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    return None if dtype == torch.float32 else dtype


@contextlib.contextmanager
def _inference(model: OmniSpectra, dtype: Any):
    """No-grad eval mode (restored afterwards), under autocast when ``dtype`` is set."""
    import torch

    device_type = next(model.parameters()).device.type
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if dtype is None:
                yield
            else:
                with torch.autocast(device_type=device_type, dtype=dtype):
                    yield
    finally:
        model.train(was_training)


def _resolve_model(model: Any, device: Any) -> OmniSpectra:
    from .model import OmniSpectra
    from .pretrained import load_model

    if isinstance(model, OmniSpectra):
        return model if device is None else model.to(device)
    if isinstance(model, (str, os.PathLike)):
        return load_model(model, device=device)
    raise CheckpointError(
        f"model must be a model name, a weights-file path or an OmniSpectra instance, got "
        f"{type(model).__name__}"
    )


def _progress_bar(progress: bool | None, total: int | None, desc: str):
    if progress is None:
        progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="spectra", file=sys.stderr)


def _run(
    model: OmniSpectra,
    items: Iterator[tuple[str, Any]],
    compute: Callable[[list[Tokens]], np.ndarray],
    batch_size: int,
    progress: bool | None,
    total: int | None,
    desc: str,
) -> tuple[list[np.ndarray], list[str]]:
    """Tokenize lazily, batch by length inside pools, compute, and keep input order."""
    from .collate import length_sorted_batches

    if not (isinstance(batch_size, numbers.Integral) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    cfg = model.config
    results: list[np.ndarray] = []
    ids: list[str] = []
    bar = _progress_bar(progress, total, desc)
    pool_size = _POOL_FACTOR * batch_size

    def flush(pool: list[Tokens]) -> None:
        if not pool:
            return
        batches = length_sorted_batches([t.n_tokens for t in pool], batch_size)
        out: list[Any] = [None] * len(pool)
        for batch in batches:
            values = compute([pool[i] for i in batch])
            for i, row in zip(batch, values):
                out[i] = row
            if bar is not None:
                bar.update(len(batch))
        results.extend(out)

    try:
        pool: list[Tokens] = []
        for sid, obj in items:
            pool.append(_tokenize_item(sid, obj, cfg.patch_size, cfg.stride))
            ids.append(sid)
            if len(pool) >= pool_size:
                flush(pool)
                pool = []
        flush(pool)
    finally:
        if bar is not None:
            bar.close()
    return results, ids


def _count(spectra: Any) -> int | None:
    """Number of spectra when it is known without reading files, else None."""
    if isinstance(spectra, (list, tuple)) and all(_is_single(s) for s in spectra):
        return len(spectra)
    if type(spectra).__name__ == "SpectrumList":
        return len(spectra)
    return None


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
        ``SpectrumList``, a list/iterable of spectra, a file path (``str`` or
        `~pathlib.Path`, read with :func:`omnispectra.io.read`; a file holding several
        spectra contributes several rows), a directory (every spectrum file in it), a
        2-D ``Spectrum`` (one row per spectrum) or a list mixing all of these.
    model : str, path-like or OmniSpectra
        ``"default"`` (the bundled weights), a registry name, a weights file, or a model.
    batch_size : int
        Spectra per forward pass; spectra of similar length are batched together.
    device : str or torch.device, optional
        Default: the model's device for an instance, else CUDA when available.
    dtype : torch.dtype or str, optional
        ``"auto"`` (default): bfloat16 autocast where the hardware runs it natively, else
        float32 (:func:`default_dtype`); ``torch.bfloat16``/``"bf16"``, ``torch.float16``
        or ``"float32"`` force one.
    progress : bool, optional
        Show a progress bar on stderr; default only when stderr is a terminal and more
        than one spectrum is given.
    return_ids : bool
        Also return the spectrum ids (``meta['id']``, else ``"FILESTEM:k"`` for files and
        the input position for in-memory spectra).
    format : str, optional
        Reader to use for paths instead of auto-detection.

    Returns
    -------
    embeddings : ndarray, float32
        Shape ``(D,)`` for one spectrum, ``(N, D)`` otherwise, rows in input order
        (a path is always "many", even when its file holds one spectrum).
    ids : str or list of str
        Only with ``return_ids=True``.

    Raises
    ------
    SpectrumTypeError, InvalidSpectrumError, UnitsError
        An input is not a spectrum or cannot be tokenized (the message names it).
    SpectrumFormatError
        A path cannot be read.
    CheckpointError
        The model cannot be loaded.

    Examples
    --------
    >>> import omnispectra
    >>> from omnispectra.examples import example_paths
    >>> vectors, ids = omnispectra.embed(example_paths(), return_ids=True)  # doctest: +SKIP
    >>> vectors.shape  # doctest: +SKIP
    (3, 768)
    """
    from .collate import collate

    single, items = _iter_inputs(spectra, format)
    net = _resolve_model(model, device)
    dev = next(net.parameters()).device
    torch_dtype = _resolve_dtype(dtype, dev)

    def compute(tokens: list[Tokens]) -> np.ndarray:
        batch = collate(tokens).to(dev)
        with _inference(net, torch_dtype):
            out = net.embed(batch.tokens, batch.wavelength, batch.valid)
        return out.float().cpu().numpy()

    total = 1 if single else _count(spectra)
    show = progress if progress is not None else (None if not single else False)
    rows, ids = _run(net, items, compute, batch_size, show, total, "embedding")
    array = (np.stack(rows).astype(np.float32, copy=False) if rows
             else np.zeros((0, net.config.dim), dtype=np.float32))
    if single:
        array, ids = array[0], ids[0]
    return (array, ids) if return_ids else array


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
    spectra, model, batch_size, device, dtype, progress, return_ids, format
        As for :func:`embed`.
    n_masks : int
        Masks averaged per spectrum.
    seed : int
        Seed of the masks.

    Returns
    -------
    scores : float or ndarray of shape (N,), float64
        NaN for a spectrum too short to be masked (fewer than 4 tokens).
    ids : str or list of str
        Only with ``return_ids=True``.
    """
    from .collate import Sample, collate
    from .masking import chunk_mask, mask_rng

    if not (isinstance(n_masks, numbers.Integral) and n_masks >= 1):
        raise ValueError(f"n_masks must be a positive integer, got {n_masks!r}")
    single, items = _iter_inputs(spectra, format)
    net = _resolve_model(model, device)
    dev = next(net.parameters()).device
    torch_dtype = _resolve_dtype(dtype, dev)
    cfg = net.config

    def compute(tokens: list[Tokens]) -> np.ndarray:
        scores = np.zeros((n_masks, len(tokens)))
        for k in range(n_masks):
            samples = [Sample(t, chunk_mask(t.n_tokens, mask_rng(seed, k, 0), cfg.patch_size,
                                            cfg.mask_ratio)) for t in tokens]
            batch = collate(samples).to(dev)
            with _inference(net, torch_dtype):
                pred = net.reconstruct(batch.tokens, batch.wavelength, batch.valid)
                mse = _per_sample_mse(pred, batch.target, batch.loss_mask, batch.pixel_valid)
            scores[k] = mse.double().cpu().numpy()
        with np.errstate(all="ignore"):
            valid = np.isfinite(scores)
            return np.where(valid.any(0), np.where(valid, scores, 0.0).sum(0) / np.maximum(valid.sum(0), 1),
                            np.nan)

    total = 1 if single else _count(spectra)
    show = progress if progress is not None else (None if not single else False)
    rows, ids = _run(net, items, compute, batch_size, show, total, "scoring")
    scores = np.asarray(rows, dtype=np.float64)
    if single:
        scores, ids = float(scores[0]), ids[0]
    return (scores, ids) if return_ids else scores


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
                for a, b in zip(edges[::2], edges[1::2])]

    def to_table(self):
        """The per-pixel arrays as an `~astropy.table.Table`."""
        from astropy.table import Table

        table = Table({"wavelength": self.wavelength, "flux": self.flux,
                       "reconstruction": self.reconstruction, "masked": self.pixel_masked})
        table["wavelength"].unit = "Angstrom"
        if self.flux_unit:
            table["flux"].unit = table["reconstruction"].unit = self.flux_unit
        table.meta.update({"id": self.id, "mse": self.mse})
        return table


def _single_spectrum(spectrum: Any, format: str | None) -> tuple[str, Any]:
    if isinstance(spectrum, Tokens):
        raise SpectrumTypeError(
            "reconstruct() needs the spectrum itself (its pixel wavelengths), not Tokens")
    single, items = _iter_inputs(spectrum, format)
    if single:
        return next(items)
    found = list(items)
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
    from .tokenizer import _patch_index

    sid, obj = _single_spectrum(spectrum, format)
    net = _resolve_model(model, device)
    dev = next(net.parameters()).device
    torch_dtype = _resolve_dtype(dtype, dev)
    cfg = net.config
    tok = _tokenize_item(sid, obj, cfg.patch_size, cfg.stride)
    try:
        wave, flux, _, bad = spectrum_arrays(*obj) if isinstance(obj, tuple) else spectrum_arrays(obj)
    except OmniSpectraError as err:  # pragma: no cover - tokenize already checked
        raise _with_context(err, f"spectrum {sid!r}") from err
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
    with _inference(net, torch_dtype):
        pred = net.reconstruct(batch.tokens, batch.wavelength, batch.valid)
        mse = float(_per_sample_mse(pred, batch.target, loss_mask, batch.pixel_valid)[0])
    predicted = batch.to_tokenizer_units(pred)[0, :n_tok].cpu().numpy()  # undo the collator's rescaling

    index = _patch_index(tok.n_pixels, tok.patch_size, tok.stride)
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
    paths: Iterable[str | Path], format: str | None = None, preset: str | None = None
) -> tuple[list[str], list[tuple[str, str]]]:
    """Read spectrum files, tokenize every spectrum and describe each in one line.

    Parameters
    ----------
    paths : iterable of path-like
        Spectrum files or directories.
    format : str, optional
        Force a reader identifier instead of auto-detection.
    preset : str, optional
        Also embed each spectrum with a freshly initialized (untrained, seeded) encoder
        of this preset and report the embedding's shape.

    Returns
    -------
    rows : list of str
        A header line and one line per spectrum.
    failures : list of (path or id, reason)
        Files or spectra that could not be read or tokenized.
    """
    from . import io

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
    rows, failures = [header], []
    for path in paths:
        try:
            spectra = io.read(path, format=format)
        except OmniSpectraError as err:
            failures.append((str(path), str(err)))
            continue
        for spec in spectra:
            meta = spec.meta or {}
            sid = str(meta.get("id", Path(path).name))
            try:
                tok = tokenize(spec)
            except OmniSpectraError as err:
                failures.append((sid, str(err)))
                continue
            wave = spec.spectral_axis.to_value("Angstrom")
            line = (f"{sid[-44:]:<44} {str(meta.get('survey', '?')):<11} {tok.n_pixels:>7} "
                    f"{wave[0]:>8.1f}-{wave[-1]:<8.1f} {tok.n_tokens:>6} {int(tok.valid.sum()):>6}")
            if model is not None:
                with torch.no_grad():
                    batch = collate([tok])
                    emb = model.embed(batch.tokens, batch.wavelength, batch.valid)[0].numpy()
                line += f"  shape {emb.shape}, norm {np.linalg.norm(emb):.2f}"
            rows.append(line)
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


def _resolve_probe(probe: Any, task: str):
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
        return load_probe(path)
    if isinstance(probe, (str, os.PathLike)):
        return load_probe(probe)
    raise CheckpointError(f"probe must be a path or an omnispectra.probes.Probe, got {type(probe).__name__}")


def _predict(spectra, task, probe, model, batch_size, device, dtype, progress, format):
    """Embed ``spectra`` with the encoder the probe belongs to and apply the probe."""
    head = _resolve_probe(probe, task)
    expected_kind = "classification" if task == "source_class" else "regression"
    if head.kind != expected_kind:
        raise CheckpointError(f"the probe is a {head.kind} probe; {task} needs a {expected_kind} probe")
    net = _resolve_model(model, device)
    head.check_encoder(net)
    single, _ = _iter_inputs(spectra, format)
    vectors, ids = embed(spectra, model=net, batch_size=batch_size, dtype=dtype, progress=progress,
                         return_ids=True, format=format)
    if single:
        vectors, ids = vectors[None, :], [ids]
    return head, head.predict(vectors), list(ids)


def classify(
    spectra: Any,
    model: str | os.PathLike | OmniSpectra = "default",
    probe: Any = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = "auto",
    progress: bool | None = None,
    format: str | None = None,
):
    """Source class (GALAXY, QSO or STAR) of spectra, with class probabilities.

    A linear probe on the mean-pooled embedding (paper, *Source Classification*),
    trained across SDSS/BOSS/eBOSS, DESI, LAMOST, MaNGA, MILES, APOGEE and X-shooter
    spectra by ``scripts/train_predictors.py``; its held-out scores are in
    ``omnispectra/data/predictors.json``.

    Parameters
    ----------
    spectra : spectrum, path, or iterable of them
        As for :func:`embed` (files and directories are read with :func:`omnispectra.io.read`).
    model : str, path-like or OmniSpectra
        The encoder; must be the one the probe was trained on (default: the bundled model).
    probe : path or Probe, optional
        Default: the probe bundled with the package.
    batch_size, device, dtype, progress, format
        As for :func:`embed`.

    Returns
    -------
    astropy.table.Table
        One row per spectrum, in input order: ``id``, ``class`` and ``prob_<CLASS>``
        for every class of the probe (``prob_GALAXY``, ``prob_QSO``, ``prob_STAR``).

    Raises
    ------
    CheckpointError
        The bundled probe is missing, or the probe belongs to another encoder.
    """
    from astropy.table import Table

    head, prob, ids = _predict(spectra, "source_class", probe, model, batch_size, device, dtype,
                               progress, format)
    names = head.names
    table = Table()
    table["id"] = np.asarray(ids, dtype=str)
    table["class"] = np.asarray([names[k] for k in np.argmax(prob, axis=1)] if len(ids) else [], dtype=str)
    for k, name in enumerate(names):
        table[f"prob_{name}"] = prob[:, k].astype(np.float32) if len(ids) else np.zeros(0, np.float32)
        table[f"prob_{name}"].description = f"probability that the source is a {name}"
    table.meta["probe"] = str(head.info.get("name", "source_class"))
    return table


def predict_stellar_parameters(
    spectra: Any,
    model: str | os.PathLike | OmniSpectra = "default",
    probe: Any = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = "float32",
    progress: bool | None = None,
    format: str | None = None,
):
    """Effective temperature, surface gravity and metallicity of stellar spectra.

    A probe on the embedding trained on the MILES stars (Teff fitted as log10 Teff; its
    head and recipe are recorded in the probe file); meaningful for stars only, with the
    accuracy recorded in ``omnispectra/data/predictors.json``. Parameters as for
    :func:`classify`, except that ``dtype`` defaults to float32 (see :func:`default_dtype`).

    Returns
    -------
    astropy.table.Table
        ``id``, ``teff`` (K), ``logg`` (log10 of cm s^-2), ``fe_h`` (dex), input order.
    """
    from astropy import units as u
    from astropy.table import Table

    head, values, ids = _predict(spectra, "stellar_params", probe, model, batch_size, device, dtype,
                                 progress, format)
    table = Table()
    table["id"] = np.asarray(ids, dtype=str)
    descriptions = {"teff": "effective temperature", "logg": "log10 surface gravity [cm s^-2]",
                    "fe_h": "iron abundance [Fe/H] (dex)"}
    for k, name in enumerate(head.names):
        table[name] = values[:, k] if len(ids) else np.zeros(0)
        table[name].description = descriptions.get(name, name)
    if "teff" in table.colnames:
        table["teff"].unit = u.K
    return table


def predict_redshift(
    spectra: Any,
    model: str | os.PathLike | OmniSpectra = "default",
    probe: Any = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = "float32",
    progress: bool | None = None,
    format: str | None = None,
):
    """Redshift of galaxy and quasar spectra (only where a redshift probe is shipped).

    Parameters as for :func:`classify`, except that ``dtype`` defaults to float32.

    Returns
    -------
    astropy.table.Table
        ``id`` and ``z``, input order.
    """
    from astropy.table import Table

    head, values, ids = _predict(spectra, "redshift", probe, model, batch_size, device, dtype,
                                 progress, format)
    table = Table()
    table["id"] = np.asarray(ids, dtype=str)
    table["z"] = values[:, 0] if len(ids) else np.zeros(0)
    table["z"].description = "redshift"
    return table
