"""The forward pass of omnispectra.inference.pipeline: the batched masked copies of the anomaly measures."""

from __future__ import annotations

import numpy as np
import pytest

from omnispectra.collate import Sample, collate
from omnispectra.inference import pipeline
from omnispectra.inference.pipeline import RunOptions, masked_scores, open_inputs
from omnispectra.inference.scoring import Masks, masked_chi2, per_sample_mse
from omnispectra.masking import chunk_mask, mask_rng
from omnispectra.runtime import inference


def _one_pass_per_mask(net, tokens, masks):
    """The former loop: one collate and forward pass per mask over all spectra."""
    cfg = net.config
    mse, chi2 = np.zeros((masks.n, len(tokens))), np.zeros((masks.n, len(tokens)))
    for k in range(masks.n):
        rng = [mask_rng(masks.seed, k, 0) for _ in tokens]
        samples = [Sample(t, chunk_mask(t.n_tokens, r, cfg.patch_size, cfg.mask_ratio))
                   for t, r in zip(tokens, rng, strict=True)]
        batch = collate(samples)
        with inference(net, None):
            pred = net.reconstruct(batch.tokens, batch.wavelength, batch.valid)
            mse[k] = per_sample_mse(pred, batch.target, batch.loss_mask, batch.pixel_valid).double().numpy()
            predicted = batch.to_tokenizer_units(pred.float()).numpy()
        loss_mask = batch.loss_mask.numpy()
        chi2[k] = [masked_chi2(t, predicted[b, :t.n_tokens], loss_mask[b, :t.n_tokens])
                   for b, t in enumerate(tokens)]
    return mse, chi2


def _sine_spectra(lengths, seed):
    """Noisy sine spectra (wave, flux, ivar) of the given pixel counts."""
    rng = np.random.default_rng(seed)
    spectra = []
    for n in lengths:
        wave = np.linspace(4000.0, 4000.0 + 1.5 * n, n)
        flux = 1.0 + 0.3 * np.sin(wave / 40.0) + 0.05 * rng.standard_normal(n)
        spectra.append((wave, flux, np.full(n, 400.0)))
    return spectra


@pytest.fixture(scope="module")
def tokens(model):
    spectra = _sine_spectra((900, 1500, 2400, 700), seed=3)
    inputs = open_inputs(spectra, model, RunOptions(), measure=True)
    return [item.prepared for item in inputs]


@pytest.mark.parametrize("per_pass", [None, 1, 150], ids=["all-in-one", "one-row", "some-rows"])
def test_batched_masks_equal_one_pass_per_mask(model, tokens, per_pass):
    masks = Masks(5, seed=7)
    want_mse, want_chi2 = _one_pass_per_mask(model, tokens, masks)
    mse, chi2, finite = masked_scores(model, tokens, masks, None, tokens_per_pass=per_pass)
    assert finite.all() and np.isfinite(chi2).all()
    np.testing.assert_allclose(mse, want_mse, rtol=1e-5)
    np.testing.assert_allclose(chi2, want_chi2, rtol=1e-5)
    # the masks differ (else the comparison could not tell masks apart)
    assert np.ptp(chi2, axis=0).min() > 0


def test_fewer_passes_than_masks(model, tokens, monkeypatch):
    calls = []
    original = type(model).reconstruct
    monkeypatch.setattr(type(model), "reconstruct",
                        lambda self, *a: calls.append(a[0].shape[0]) or original(self, *a))
    masked_scores(model, tokens, Masks(8), None, tokens_per_pass=1 << 16)
    assert calls == [8 * len(tokens)]
    calls.clear()
    masked_scores(model, tokens, Masks(8), None)   # CPU default: passes of at most 4096 padded tokens
    longest = max(t.n_tokens for t in tokens)
    assert sum(calls) == 8 * len(tokens) and max(calls) == pipeline.MASKED_TOKENS_PER_PASS_CPU // longest
    calls.clear()
    masked_scores(model, tokens, Masks(8), None, tokens_per_pass=2 * max(t.n_tokens for t in tokens))
    assert calls == [2] * 16


def test_non_finite_reconstruction_is_reported(model, tokens, monkeypatch):
    original = type(model).reconstruct

    def poisoned(self, x, *rest):
        out = original(self, x, *rest)
        out[1] = float("nan")   # the second row of a pass: spectrum 1 under mask 0
        return out

    monkeypatch.setattr(type(model), "reconstruct", poisoned)
    _, _, finite = masked_scores(model, tokens, Masks(3), None)
    assert finite.tolist() == [True, False, True, True]


def test_embedding_passes_are_bounded_in_tokens(model, monkeypatch):
    """On CPU a batch is embedded in passes of at most EMBED_TOKENS_PER_PASS_CPU padded tokens
    (its attention's memory), with the embeddings of one whole-batch pass."""
    from omnispectra.inference.pipeline import forward

    spectra = _sine_spectra((900, 1500, 2400, 700, 1200, 1000), seed=5)
    calls = []
    original = type(model).embed
    monkeypatch.setattr(type(model), "embed", lambda self, *a: calls.append(a[0].shape) or original(self, *a))
    options = RunOptions(batch_size=6, progress=False)
    monkeypatch.setattr(pipeline, "EMBED_TOKENS_PER_PASS_CPU", 1 << 20)
    whole = forward(spectra, model, options).vectors
    assert len(calls) == 1
    calls.clear()
    monkeypatch.setattr(pipeline, "EMBED_TOKENS_PER_PASS_CPU", 500)
    split = forward(spectra, model, options).vectors
    assert len(calls) > 1 and sum(shape[0] for shape in calls) == 6
    assert max(shape[0] * shape[1] for shape in calls) <= 500 < 6 * max(shape[1] for shape in calls)
    np.testing.assert_allclose(split, whole, rtol=1e-4, atol=1e-5)


def test_release_free_heap_returns_freed_pages_on_glibc():
    import platform
    import sys

    from omnispectra.runtime import release_free_heap

    if not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"):
        assert release_free_heap() is False
        return
    kept = [np.ones(200 + i % 300) for i in range(20000)]   # small blocks, every other one freed
    del kept[::2]
    assert release_free_heap() is True
