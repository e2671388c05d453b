"""Embeddings, one vector per spectrum, and the token summaries of ``omnispectra tokenize``.

The embedding is the encoder's last hidden states mean-pooled over valid tokens
(:meth:`omnispectra.model.OmniSpectra.embed`), computed through the one pipeline of
:mod:`omnispectra.inference.pipeline`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..runtime import resolve_model
from .inputs import Inputs, prepare_tokens
from .pipeline import RunOptions, forward, item_table, result_meta

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..model import OmniSpectra

__all__ = ["embed", "token_summary"]


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
        :data:`omnispectra.io.sources.SPECTRUM_FILE_SUFFIXES`), a glob pattern, a 2-D
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
        the input position for in-memory spectra; made unique, see :mod:`omnispectra.io.sources`).
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
        Order is kept (see :class:`omnispectra.inference.inputs.Inputs`).

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
    options = RunOptions(batch_size, dtype, progress, format, on_error, workers)
    done = forward(spectra, net, options)
    vectors, kept, inputs = done.vectors, done.items, done.inputs
    ids = [item.id for item in kept]
    if inputs.single and not kept:  # one spectrum: nothing left to return
        raise inputs.skipped[0].error
    if as_table:
        from ..results import embeddings_table

        sources = item_table(kept)
        return embeddings_table(ids, vectors, source_files=sources["source_file"], surveys=sources["survey"],
                                meta=result_meta(net, inputs, done.torch_dtype, kind="embeddings"))
    if inputs.single:
        vectors, ids = vectors[0], ids[0]
    return (vectors, ids) if return_ids else vectors


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

        from ..collate import collate
        from ..model import OmniSpectra, OmniSpectraConfig

        torch.manual_seed(0)
        model = OmniSpectra(OmniSpectraConfig.from_preset(preset)).eval()
    header = f"{'id':<44} {'survey':<11} {'pixels':>7} {'wavelength [A]':>17} {'tokens':>6} {'valid':>6}"
    if model is not None:
        header += f"  embedding ({preset}, untrained)"
    rows = [header]
    if isinstance(paths, (list, tuple)) and not paths:
        return rows, []
    from ..tokenizer import PATCH_SIZE, STRIDE

    patch, stride = (PATCH_SIZE, STRIDE) if model is None else (model.config.patch_size, model.config.stride)
    inputs = Inputs(paths, format=format, on_error=on_error,
                    prepare=lambda item: prepare_tokens(item, patch, stride, None))
    for item in inputs:
        tok = item.prepared
        wave = None if item.data is None else item.data.wavelength
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
