"""The normalization leak (omnispectra.collate): visible tokens must not give away the masked chunks.

The tokenizer standardizes a spectrum over all its valid pixels, so with the old
normalization the masked pixels' mean follows from the visible tokens. The collator now
re-standardizes each masked spectrum over its visible pixels. These tests fail on the old
normalization (``restandardize=False``), reconstruct() still maps back to physical flux, and
the Huber loss bounds the pull of outlying targets.
"""

import numpy as np
import pytest
import torch

from omnispectra.api import reconstruct
from omnispectra.collate import Sample, collate, composed_normalization
from omnispectra.masking import chunk_mask, mask_rng, masked_mean_from_visible
from omnispectra.model import HUBER_DELTA, OmniSpectra, OmniSpectraConfig, masked_reconstruction_loss
from omnispectra.tokenizer import tokenize


def _spectrum(rng, n_pix=3000):
    """Blocks of random level (independent of each other) plus noise and an emission line."""
    wave = np.linspace(3800.0, 9200.0, n_pix)
    edges = np.sort(rng.choice(np.arange(1, n_pix), size=rng.integers(3, 12), replace=False))
    flux = np.concatenate([np.full(len(b), rng.normal(10, 3)) for b in np.split(np.arange(n_pix), edges)])
    flux += rng.normal(0, 1, n_pix)
    centre = rng.uniform(wave[0], wave[-1])
    flux += rng.uniform(0, 40) * np.exp(-0.5 * ((wave - centre) / 5.0) ** 2)
    return wave, flux


def _masked_errors(restandardize, n_spectra=60, n_masks=3):
    """Squared error of predicting the masked pixels' mean with 0 and with the leak estimate."""
    rng = np.random.default_rng(1)
    zero, leak = [], []
    for i in range(n_spectra):
        tok = tokenize(*_spectrum(rng))
        for k in range(n_masks):
            chunk = chunk_mask(tok.n_tokens, mask_rng(7, k, i))
            batch = collate([Sample(tok, chunk)], restandardize=restandardize)
            flux = batch.target[0, :, 2:].double().numpy()
            pixel_valid, valid = batch.pixel_valid[0].numpy(), batch.valid[0].numpy()
            target = flux[batch.loss_mask[0].numpy()[:, None] & pixel_valid].mean()
            estimate = masked_mean_from_visible(flux, pixel_valid, valid, chunk, tok.stride)
            zero.append(target ** 2)
            leak.append((target - estimate) ** 2)
    return np.mean(zero), np.mean(leak)


def test_masked_mean_is_not_recoverable_from_visible_tokens():
    zero_old, leak_old = _masked_errors(restandardize=False)
    assert leak_old < 0.5 * zero_old  # the old normalization leaks: the estimate is far better than 0
    zero_new, leak_new = _masked_errors(restandardize=True)
    assert leak_new >= 0.95 * zero_new  # now it is no better than predicting 0


@pytest.mark.parametrize("restandardize", [True, False], ids=["new", "old"])
def test_inputs_do_not_depend_on_masked_pixels(restandardize):
    """Changing the pixels that only masked tokens cover leaves the model's input unchanged."""
    wave, flux = _spectrum(np.random.default_rng(3))
    tok = tokenize(wave, flux)
    chunk = chunk_mask(tok.n_tokens, mask_rng(0, 0, 0))
    pixel = np.arange(tok.n_tokens)[:, None] * tok.stride + np.arange(tok.patch_size)
    hidden = np.setdiff1d(pixel[chunk].ravel(), pixel[~chunk].ravel())
    hidden = hidden[hidden < flux.size]
    changed = flux.copy()
    changed[hidden] = 5.0 * changed[hidden] + 100.0
    a = collate([Sample(tok, chunk)], restandardize=restandardize).tokens
    b = collate([Sample(tokenize(wave, changed), chunk)], restandardize=restandardize).tokens
    same = torch.allclose(a, b, atol=1e-4)
    assert same is restandardize


class _Echo(OmniSpectra):
    """A 'model' that returns its input tokens: visible tokens come back, masked ones are 0."""

    def reconstruct(self, tokens, wavelength, valid):
        return tokens.clone()


def test_reconstruct_maps_back_to_physical_flux():
    wave, flux = _spectrum(np.random.default_rng(4))
    net = _Echo(OmniSpectraConfig.from_preset("tiny", dim=32, n_layers=1, n_heads=2))
    result = reconstruct((wave, flux), model=net, seed=0)
    tok = result.tokens
    assert result.token_mask.any()
    pixel = np.arange(tok.n_tokens)[:, None] * tok.stride + np.arange(tok.patch_size)
    seen = np.setdiff1d(pixel[~result.token_mask].ravel(), pixel[result.token_mask].ravel())
    seen = seen[seen < flux.size]
    # pixels only visible tokens cover round-trip through tokenizer + collator normalization to the input flux
    np.testing.assert_allclose(result.reconstruction[seen], flux[seen], rtol=1e-5, atol=1e-4)
    # a prediction of 0 in batch units is the visible pixels' mean in physical units
    hidden = np.setdiff1d(pixel[result.token_mask].ravel(), pixel[~result.token_mask].ravel())
    batch = collate([Sample(tok, result.token_mask)])
    total = composed_normalization(tok.normalization, batch.shift[0].item(), batch.scale[0].item())
    np.testing.assert_allclose(result.reconstruction[hidden], total.shift, rtol=1e-5)
    seen_slots = (batch.valid[0] & ~batch.loss_mask[0])[:, None] & batch.pixel_valid[0]
    phys = tok.normalization.invert(tok.tokens[:, 2:])[seen_slots.numpy()]
    np.testing.assert_allclose(total.shift, phys.mean(), rtol=1e-5)
    np.testing.assert_allclose(total.scale, phys.std(), rtol=1e-4)
    # the composed normalization maps the batch's target back to physical flux
    np.testing.assert_allclose(total.invert(batch.target[0, :, 2:].numpy())[seen_slots.numpy()], phys,
                               rtol=1e-5)


def test_huber_loss_bounds_outliers():
    target = torch.zeros(1, 4, 6)
    loss_mask = torch.ones(1, 4, dtype=torch.bool)
    small = torch.full_like(target, 0.5)
    # within delta the Huber loss equals the MSE
    assert masked_reconstruction_loss(small, target, loss_mask, huber_delta=HUBER_DELTA).item() == \
        pytest.approx(masked_reconstruction_loss(small, target, loss_mask).item())
    # a 30-sigma chunk costs 2*30 - 1 per element instead of 900, and its gradient is bounded
    far = torch.full_like(target, 30.0).requires_grad_()
    loss = masked_reconstruction_loss(far, target, loss_mask, huber_delta=1.0)
    assert loss.item() == pytest.approx(59.0)
    loss.backward()
    assert far.grad.abs().max().item() == pytest.approx(2.0 / target.numel())
    assert masked_reconstruction_loss(far.detach(), target, loss_mask).item() == pytest.approx(900.0)
    with pytest.raises(ValueError, match="huber_delta"):
        masked_reconstruction_loss(far, target, loss_mask, huber_delta=0.0)


def test_pretraining_loss_is_huber():
    net = OmniSpectra(OmniSpectraConfig.from_preset("tiny", dim=32, n_layers=1, n_heads=2))
    rng = np.random.default_rng(5)
    tok = tokenize(*_spectrum(rng, 1200))
    batch = collate([Sample(tok, chunk_mask(tok.n_tokens, mask_rng(0, 0, 0)))])
    pred = net.reconstruct(batch.tokens, batch.wavelength, batch.valid)
    expected = masked_reconstruction_loss(pred, batch.target, batch.loss_mask, batch.pixel_valid,
                                          huber_delta=HUBER_DELTA)
    assert net.loss(batch).item() == pytest.approx(expected.item())
