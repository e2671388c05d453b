"""Contiguous chunk masking for masked-reconstruction pretraining (paper, section *Masking*).

For a spectrum of ``T`` tokens (its own, unpadded count) and patch size ``p``:

- chunk width ``w = floor(2.5 p)`` (50 tokens for p=20) and ``N = floor(T / 2w)``
  intervals; interval ``k`` spans tokens ``[2wk, 2wk + 2w)``;
- ``M = floor(gamma * N)`` distinct intervals are drawn at random (gamma = 0.75);
- in each drawn interval a chunk of ``w`` tokens starts at a random index in
  ``[2wk, 2wk + w)``. The upper bound is exclusive so that a chunk ends at least one
  token before the next interval begins: two masked chunks are never adjacent.

Consequences worth knowing: at most ``M w / T <= gamma / 2`` of the tokens are masked
(37.5% for gamma = 0.75), and tokens past ``2wN`` are never masked.

Short spectra: when the paper's rule masks nothing (``M = 0``; for gamma = 0.75 that is
``N <= 1``, i.e. every spectrum shorter than ``4w`` = 200 tokens for p=20, such as
VIPERS' ~55 tokens or a 1,500-pixel spectrum) the width
is shrunk to ``w = max(1, T // 4)`` so such spectra are still masked (two intervals,
one chunk of ~T/4 tokens). Spectra of fewer than 4 tokens are not masked.

Only valid tokens are reconstruction targets: :func:`chunk_mask` returns the chunk
positions; the loss mask is ``chunk & valid``.

:func:`masked_mean_from_visible` is the diagnostic of the normalization leak (see
:mod:`omnispectra.collate` and ``scripts/measure_leak.py``).

Ablation: ``scheme="random"`` in :func:`draw_mask` masks as many tokens as the chunk
rule would, scattered uniformly over the spectrum; with
overlapping patches a lone masked token's neighbours show half of its pixels, which is
the shortcut chunk masking removes.

Randomness comes from :func:`mask_rng`, a generator seeded by ``(seed, epoch, index)``,
so masks do not depend on the number of data-loader workers and a resumed run repeats
the same masks.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MASK_RATIO", "MASKING_SCHEMES", "chunk_width", "chunk_mask", "draw_mask", "mask_rng",
           "masked_mean_from_visible"]

MASK_RATIO = 0.75
#: Pretraining mask schemes: the paper's contiguous chunks, and scattered tokens (ablation).
MASKING_SCHEMES = ("chunk", "random")


def mask_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Random generator for the mask of sample ``index`` in ``epoch`` of a run seeded ``seed``."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def chunk_width(n_tokens: int, patch_size: int = 20, ratio: float = MASK_RATIO) -> tuple[int, int, int]:
    """Return ``(w, N, M)``: chunk width, number of intervals and number of masked chunks.

    Follows the paper's rule and falls back to ``w = max(1, T // 4)`` when that masks
    nothing (see the module docstring).

    Raises
    ------
    ValueError
        ``ratio`` outside [0, 1].
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must lie in [0, 1], got {ratio}")
    w = int(2.5 * patch_size)
    n_int = n_tokens // (2 * w)
    n_mask = int(ratio * n_int)
    if n_mask == 0:
        w = max(1, n_tokens // 4)
        n_int = n_tokens // (2 * w)
        n_mask = int(ratio * n_int)
    return w, n_int, n_mask


def chunk_mask(
    n_tokens: int,
    rng: np.random.Generator,
    patch_size: int = 20,
    ratio: float = MASK_RATIO,
) -> np.ndarray:
    """Draw the contiguous chunk mask of one spectrum.

    Parameters
    ----------
    n_tokens : int
        The spectrum's own (unpadded) number of tokens ``T``.
    rng : numpy.random.Generator
        Source of randomness, e.g. :func:`mask_rng` ``(seed, epoch, index)``.
    patch_size : int
        Patch size ``p`` of the tokenizer (sets ``w = floor(2.5 p)``).
    ratio : float
        Mask ratio gamma, the fraction of intervals that get a chunk.

    Returns
    -------
    ndarray of bool, shape (n_tokens,)
        True where a token is masked (to be zeroed in the input and reconstructed).
    """
    mask = np.zeros(n_tokens, dtype=bool)
    w, n_int, n_mask = chunk_width(n_tokens, patch_size, ratio)
    if n_mask == 0:
        return mask
    chosen = np.sort(rng.choice(n_int, size=n_mask, replace=False))
    starts = 2 * w * chosen + rng.integers(0, w, size=n_mask)
    index = (starts[:, None] + np.arange(w)[None, :]).ravel()
    mask[index] = True
    return mask


def draw_mask(
    n_tokens: int,
    rng: np.random.Generator,
    patch_size: int = 20,
    ratio: float = MASK_RATIO,
    scheme: str = "chunk",
) -> np.ndarray:
    """The pretraining mask of one spectrum under ``scheme`` (one of :data:`MASKING_SCHEMES`).

    ``chunk`` is :func:`chunk_mask`; ``random`` masks as many tokens as the chunk rule
    would (``M w``, see :func:`chunk_width`), drawn uniformly without replacement.
    Parameters and return value otherwise as in :func:`chunk_mask`.

    Raises
    ------
    ValueError
        Unknown scheme or a ratio outside [0, 1].
    """
    if scheme == "chunk":
        return chunk_mask(n_tokens, rng, patch_size, ratio)
    if scheme != "random":
        raise ValueError(f"unknown masking scheme {scheme!r}; known: {', '.join(MASKING_SCHEMES)}")
    w, _, n_mask = chunk_width(n_tokens, patch_size, ratio)
    scattered = np.zeros(n_tokens, dtype=bool)
    scattered[rng.choice(n_tokens, size=min(n_mask * w, n_tokens), replace=False)] = True
    return scattered


def masked_mean_from_visible(
    flux: np.ndarray, pixel_valid: np.ndarray, valid: np.ndarray, chunk: np.ndarray, stride: int
) -> float:
    """The masked pixels' mean that the visible tokens imply if the spectrum averages to zero.

    A spectrum standardized over all its valid pixels (the tokenizer) has normalized
    fluxes summing to zero, so the pixels hidden by the mask sum to minus the visible
    ones: ``-sum(visible pixels) / n(hidden pixels)``, each pixel counted once. This
    is the normalization leak; on the collator's re-standardized tokens the estimate
    carries no information about the masked chunks.

    Parameters
    ----------
    flux : ndarray (T, p)
        Per-slot fluxes of one spectrum's tokens (e.g. ``Batch.target[b, :T, 2:]``).
    pixel_valid : ndarray (T, p) bool
    valid : ndarray (T,) bool
        Token validity.
    chunk : ndarray (T,) bool
        Masked tokens.
    stride : int
        Tokenizer stride (slot ``(t, j)`` is pixel ``t * stride + j``).

    Returns
    -------
    float
        The estimate; 0 when no valid pixel is hidden.
    """
    flux = np.asarray(flux, dtype=np.float64)
    n_tok, patch = flux.shape
    pixel = np.arange(n_tok)[:, None] * stride + np.arange(patch)[None, :]
    seen = (valid & ~chunk)[:, None] & pixel_valid
    hidden = (valid & chunk)[:, None] & pixel_valid
    visible_pixels, first = np.unique(pixel[seen], return_index=True)
    hidden_pixels = np.setdiff1d(pixel[hidden], visible_pixels)
    if hidden_pixels.size == 0:
        return 0.0
    return float(-flux[seen][first].sum() / hidden_pixels.size)
