import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnispectra.masking import chunk_mask, chunk_width, mask_rng, masked_mean_from_visible
from omnispectra.tokenizer import tokenize


def _runs(mask):
    """(start, length) of each run of True."""
    padded = np.r_[False, mask, False].astype(int)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2], edges[1::2] - edges[::2], strict=True))


def test_paper_rule_for_sdss_length():
    # SDSS ~3850 px -> T = 384 tokens: w = 50, N = 3, M = 2
    assert chunk_width(384) == (50, 3, 2)
    mask = chunk_mask(384, mask_rng(0, 0, 0))
    assert mask.sum() == 100
    assert [length for _, length in _runs(mask)] == [50, 50]


def test_short_spectrum_rule():
    # VIPERS-like 557 px -> T = 55: the paper's rule gives N = 0, ours w = 13, N = 2, M = 1
    assert chunk_width(55) == (13, 2, 1)
    assert chunk_mask(55, mask_rng(1, 0, 0)).sum() == 13
    assert chunk_width(150) == (37, 2, 1)     # 1,500 px: paper's N = 1 -> M = 0
    assert not chunk_mask(3, mask_rng(0, 0, 0)).any()


@settings(max_examples=300, deadline=None)
@given(n_tok=st.integers(1, 2000), seed=st.integers(0, 10**6), ratio=st.sampled_from([0.25, 0.5, 0.75, 1.0]))
def test_chunk_mask_properties(n_tok, seed, ratio):
    w, n_int, n_mask = chunk_width(n_tok, 20, ratio)
    mask = chunk_mask(n_tok, mask_rng(seed, 3, 7), 20, ratio)
    runs = _runs(mask)
    assert mask.shape == (n_tok,)
    assert len(runs) == n_mask                       # count: chunks never merge
    assert all(length == w for _, length in runs)    # width
    assert mask.sum() == n_mask * w
    assert mask.sum() <= max(ratio / 2 * n_tok, 0) + 1e-9 or n_mask == 0
    # non-adjacent: at least one unmasked token between chunks; each within its interval
    for (s0, l0), (s1, _) in zip(runs, runs[1:], strict=False):
        assert s1 > s0 + l0
    for start, _ in runs:
        k = start // (2 * w)
        assert 2 * w * k <= start < 2 * w * k + w
        assert k < n_int
    # reproducible from (seed, epoch, index), different for another index
    np.testing.assert_array_equal(mask, chunk_mask(n_tok, mask_rng(seed, 3, 7), 20, ratio))


def test_masks_differ_across_index_and_epoch():
    a = chunk_mask(1000, mask_rng(42, 0, 0))
    assert not np.array_equal(a, chunk_mask(1000, mask_rng(42, 0, 1)))
    assert not np.array_equal(a, chunk_mask(1000, mask_rng(42, 1, 0)))


def test_bad_ratio():
    with pytest.raises(ValueError):
        chunk_mask(100, mask_rng(0, 0, 0), ratio=1.5)


def test_masked_mean_from_visible_is_exact_for_a_standardized_spectrum():
    """With every valid pixel in a valid token, the visible pixels give the hidden mean exactly."""
    rng = np.random.default_rng(0)
    tok = tokenize(np.linspace(4000, 9000, 2345), rng.normal(3, 1, 2345) + np.linspace(0, 5, 2345))
    chunk = chunk_mask(tok.n_tokens, mask_rng(0, 0, 0))
    pixel = np.arange(tok.n_tokens)[:, None] * tok.stride + np.arange(tok.patch_size)
    hidden = np.setdiff1d(pixel[chunk].ravel(), pixel[~chunk].ravel())
    hidden = hidden[hidden < tok.n_pixels]
    truth = tok.pixel_flux(physical=False)[hidden].mean()
    estimate = masked_mean_from_visible(tok.tokens[:, 2:], tok.pixel_valid, tok.valid, chunk, tok.stride)
    assert abs(truth) > 0.3 and estimate == pytest.approx(truth, abs=1e-4)
    nothing_masked = chunk & False
    assert masked_mean_from_visible(tok.tokens[:, 2:], tok.pixel_valid, tok.valid, nothing_masked,
                                    tok.stride) == 0
