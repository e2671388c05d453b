import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omnispectra.collate import (
    Collator,
    LengthBucketSampler,
    Sample,
    collate,
    length_sorted_batches,
    padding_fraction,
    restandardize_tokens,
)
from omnispectra.tokenizer import tokenize


def _tokens(n_pix, seed=0, n_bad=0):
    rng = np.random.default_rng(seed)
    wave = np.linspace(3600, 9000, n_pix)
    flux = rng.normal(5, 1, n_pix)
    bad = np.zeros(n_pix, bool)
    bad[:n_bad] = True
    tok = tokenize(wave, flux, mask=bad)
    tok.meta["id"] = f"s{seed}"
    return tok


def test_collate_pads_and_masks():
    items = [_tokens(300, 0), _tokens(55, 1, n_bad=15), _tokens(120, 2)]
    chunk = np.zeros(items[0].n_tokens, bool)
    chunk[3:8] = True
    batch = collate([Sample(items[0], chunk_mask=chunk, labels={"z": 0.5}), items[1], items[2]])
    n_max = items[0].n_tokens
    assert batch.tokens.shape == (3, n_max, 22)
    assert batch.wavelength.dtype == torch.float32
    assert batch.lengths.tolist() == [t.n_tokens for t in items]
    assert batch.ids == ["s0", "s1", "s2"]
    # padding is zero and invalid
    assert not batch.valid[1, items[1].n_tokens:].any()
    assert (batch.tokens[1, items[1].n_tokens:] == 0).all()
    assert batch.valid[1].sum() == items[1].valid.sum() < items[1].n_tokens
    # masked tokens are zeroed in the input but kept in the target; loss mask = masked & valid
    assert (batch.tokens[0, 3:8] == 0).all() and (batch.target[0, 3:8] != 0).any()
    assert batch.loss_mask.sum() == 5 and batch.loss_mask[0, 3:8].all()
    assert torch.isnan(batch.labels["z"][1:]).all() and batch.labels["z"][0] == 0.5


def test_collator_masks_reproducible_and_only_valid():
    items = [(i, _tokens(n, i, n_bad=n // 3)) for i, n in enumerate([4000, 2000, 600, 3000])]
    a = Collator(seed=1)(items)
    b = Collator(seed=1)(list(reversed(items)))
    for i in range(4):  # mask of an item does not depend on batch order
        j = 3 - i
        np.testing.assert_array_equal(a.loss_mask[i, : a.lengths[i]], b.loss_mask[j, : b.lengths[j]])
    assert not (a.loss_mask & ~a.valid).any()
    assert a.loss_mask.any()
    c = Collator(seed=1)
    c.set_epoch(1)
    assert not torch.equal(c(items).loss_mask, a.loss_mask)
    assert not Collator(mask=False)(items).loss_mask.any()


def test_bucket_sampler_groups_lengths_and_covers_all():
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(50, 60, 200), rng.integers(380, 390, 200),
                              rng.integers(770, 780, 200)])
    sampler = LengthBucketSampler(lengths, batch_size=16, seed=3)
    batches = list(sampler)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(600))
    random_batches = [list(b) for b in np.array_split(rng.permutation(600), len(batches))]
    assert padding_fraction(lengths, batches) < 0.05 < padding_fraction(lengths, random_batches)
    # surveys (length groups) still mix across the epoch: batch order is shuffled
    first_group = [lengths[b[0]] // 100 for b in batches[:10]]
    assert len(set(first_group)) > 1
    sampler.set_epoch(1)
    assert list(sampler) != batches
    assert len(sampler) == len(batches)


def test_bucket_sampler_ranks_partition():
    lengths = np.arange(101)
    per_rank = [list(LengthBucketSampler(lengths, 4, num_replicas=3, rank=r, seed=0)) for r in range(3)]
    assert len({len(p) for p in per_rank}) == 1
    seen = set(np.concatenate([np.concatenate(p) for p in per_rank]).tolist())
    assert seen == set(range(101))
    with pytest.raises(ValueError):
        LengthBucketSampler(lengths, 4, num_replicas=2, rank=2)


def test_length_sorted_batches_restore_order():
    lengths = [5, 50, 7, 300, 1, 44]
    batches = length_sorted_batches(lengths, 4)
    order = np.concatenate(batches)
    assert sorted(order.tolist()) == list(range(6))
    assert np.argsort(order)[order].tolist() == list(range(6))
    assert [lengths[i] for i in batches[0]] == [300, 50, 44, 7]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(27, 900), min_size=1, max_size=6), st.integers(0, 1000))
def test_fuzz_collate(pixel_counts, seed):
    items = [(i, _tokens(n, seed + i, n_bad=n // 4)) for i, n in enumerate(pixel_counts)]
    batch = Collator(seed=seed)(items)
    for b, (_, tok) in enumerate(items):
        t = tok.n_tokens
        # the target is the tokenizer's tokens, re-standardized per sample (identity if unmasked)
        expected = restandardize_tokens(tok.tokens[None], tok.valid[None], tok.pixel_valid[None],
                                        batch.shift[b:b + 1].numpy(), batch.scale[b:b + 1].numpy())[0]
        np.testing.assert_allclose(batch.target[b, :t].numpy(), expected, rtol=1e-5, atol=1e-5)
        if not batch.loss_mask[b].any():
            np.testing.assert_array_equal(batch.target[b, :t].numpy(), tok.tokens)
        np.testing.assert_array_equal(batch.valid[b, :t].numpy(), tok.valid)
        assert not batch.valid[b, t:].any() and not batch.pixel_valid[b, t:].any()
    assert torch.isfinite(batch.tokens).all()


def test_bucket_sampler_skip_and_epoch_keys():
    lengths = np.arange(40)
    sampler = LengthBucketSampler(lengths, 4, seed=5, with_epoch=True)
    sampler.set_epoch(2)
    full = list(sampler)
    assert all(key[0] == 2 for batch in full for key in batch)
    sampler.skip_next(3)
    assert list(sampler) == full[3:]
    assert list(sampler) == full  # the skip applies once


def test_collator_epoch_keys_match_set_epoch():
    items = [_tokens(3000, i) for i in range(3)]
    c = Collator(seed=9)
    c.set_epoch(4)
    a = c([(i, t) for i, t in enumerate(items)])
    b = Collator(seed=9)([((4, i), t) for i, t in enumerate(items)])
    assert torch.equal(a.loss_mask, b.loss_mask)


def test_restandardization_over_visible_pixels():
    items = [_tokens(900, 0, n_bad=100), _tokens(400, 1), _tokens(300, 2)]
    chunk = np.zeros(items[0].n_tokens, bool)
    chunk[20:40] = True
    batch = collate([Sample(items[0], chunk), Sample(items[1]), items[2]])
    # the masked spectrum's visible valid flux slots have mean 0 and std 1, on input and target
    seen = (batch.valid[0] & ~batch.loss_mask[0])[:, None] & batch.pixel_valid[0]
    for x in (batch.tokens, batch.target):
        visible = x[0, :, 2:][seen].double()
        assert abs(visible.mean().item()) < 1e-5 and abs(visible.std(unbiased=False).item() - 1) < 1e-5
    # patch features transform like the tokenizer's own: mu_t and sigma_t of the new fluxes
    flux, pv = batch.target[0, :, 2:].double(), batch.pixel_valid[0]
    n = pv.sum(1).clamp_min(1)
    mu = (flux * pv).sum(1) / n
    sigma = (((flux - mu[:, None]) * pv) ** 2).sum(1).div(n).sqrt()
    ok = batch.valid[0]
    np.testing.assert_allclose(batch.target[0, ok, 0], mu[ok], atol=1e-4)
    np.testing.assert_allclose(batch.target[0, ok, 1], sigma[ok], atol=1e-4)
    # invalid pixels/tokens and padding stay zero; masked input tokens are zero
    assert (batch.target[0, :, 2:][~batch.pixel_valid[0]] == 0).all()
    assert (batch.tokens[0, 20:40] == 0).all()
    # unmasked samples are untouched; the shift/scale are recorded per sample
    np.testing.assert_array_equal(batch.target[1, :items[1].n_tokens].numpy(), items[1].tokens)
    assert batch.shift[1] == 0 and batch.scale[1] == 1 and batch.scale[0] != 1
    # undoing it gives back the tokenizer's tokens
    back = batch.to_tokenizer_units(batch.target)[0, :items[0].n_tokens].numpy()
    keep = np.concatenate([items[0].valid[:, None].repeat(2, 1), items[0].pixel_valid], 1)
    np.testing.assert_allclose(back[keep], items[0].tokens[keep], atol=1e-5)
    # and the old, leaky normalization is still available
    old = collate([Sample(items[0], chunk)], restandardize=False)
    np.testing.assert_array_equal(old.target[0].numpy(), items[0].tokens)
    assert Collator(seed=0, restandardize=False).restandardize is False


def test_restandardization_moves_with_batch():
    batch = collate([Sample(_tokens(900, 0), np.arange(89) % 3 == 0)])
    moved = batch.to("cpu")
    assert torch.equal(moved.shift, batch.shift) and torch.equal(moved.scale, batch.scale)
    pred = torch.randn_like(batch.target)
    np.testing.assert_allclose(moved.to_tokenizer_units(pred)[..., 2:],
                               pred[..., 2:] * batch.scale.float() + batch.shift.float(), rtol=1e-6)
    plain = collate([_tokens(300, 1)])
    assert plain.shift.tolist() == [0.0] and plain.scale.tolist() == [1.0]
