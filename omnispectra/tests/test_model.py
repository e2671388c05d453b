import math
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from omnispectra.collate import Collator, collate
from omnispectra.model import (
    PRESETS,
    OmniSpectra,
    OmniSpectraConfig,
    masked_reconstruction_loss,
    sinusoidal_encoding,
)
from omnispectra.tokenizer import tokenize

from .helpers import real_sdss_files, sdss_arrays

TINY = OmniSpectraConfig.from_preset("tiny")


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    return OmniSpectra(OmniSpectraConfig.from_preset("tiny", **overrides)).eval()


def _real_tokens():
    wave, flux, ivar, bad = sdss_arrays()
    return tokenize(wave, flux, ivar, bad)


def _synthetic_tokens(n_pix, seed, n_bad=0):
    rng = np.random.default_rng(seed)
    wave = np.geomspace(3600, 10400, n_pix)
    flux = 10 + np.sin(wave / 37.0) + rng.normal(0, 0.3, n_pix)
    bad = np.zeros(n_pix, bool)
    if n_bad:
        bad[n_pix // 2: n_pix // 2 + n_bad] = True
    return tokenize(wave, flux, mask=bad)


def test_preset_parameter_counts():
    counts = {name: OmniSpectra(cfg).get_num_params() for name, cfg in PRESETS.items()}
    assert counts["paper"] == pytest.approx(42.6e6, rel=0.03)
    assert counts["tiny"] < counts["small"] < counts["paper"]
    assert PRESETS["tiny"].dim == 128 and PRESETS["small"].dim == 256


def test_sinusoidal_encoding_formula():
    dim = 16
    wl = torch.tensor([[3600.0, 16000.5], [0.0, 9999.9]], dtype=torch.float64)
    enc = sinusoidal_encoding(wl, dim)
    assert enc.shape == (2, 2, dim)
    for i in range(dim // 2):
        omega = 10000.0 ** (-2 * i / dim)
        torch.testing.assert_close(enc[..., 2 * i], torch.sin(wl * omega))
        torch.testing.assert_close(enc[..., 2 * i + 1], torch.cos(wl * omega))


def test_encoding_stays_fp32_under_autocast():
    wl = torch.tensor([16000.0, 16001.0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        enc = sinusoidal_encoding(wl, 128)
    assert enc.dtype == torch.float32
    assert not torch.allclose(enc[0], enc[1])  # 1 A apart is still resolved


def test_embedding_init_is_truncated_normal():
    model = OmniSpectra(OmniSpectraConfig.from_preset("paper", n_layers=1))
    w = model.embed_tokens.weight
    std = 768 ** -0.5
    assert w.abs().max() <= 3 * std + 1e-6
    assert w.std().item() == pytest.approx(std * 0.986, rel=0.05)  # std of a 3-sigma truncated normal


def test_alone_equals_padded_batch_real_spectrum():
    model = _model()
    tok = _real_tokens()
    longer = [_synthetic_tokens(7800, 1, n_bad=300), _synthetic_tokens(4620, 2)]
    with torch.no_grad():
        alone = collate([tok])
        batch = collate([longer[0], tok, longer[1]])
        e_alone = model.embed(alone.tokens, alone.wavelength, alone.valid)
        e_batch = model.embed(batch.tokens, batch.wavelength, batch.valid)
        h_alone = model.encode(alone.tokens, alone.wavelength, alone.valid)
        h_batch = model.encode(batch.tokens, batch.wavelength, batch.valid)
    torch.testing.assert_close(e_batch[1:2], e_alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(h_batch[1:2, : tok.n_tokens], h_alone, atol=1e-5, rtol=0)
    assert (h_batch[1, tok.n_tokens:] == 0).all()


def test_invalid_tokens_never_influence_valid_ones():
    model = _model()
    tok = _synthetic_tokens(800, 3, n_bad=60)  # a run of invalid tokens in the middle
    assert (~tok.valid).sum() >= 3
    batch = collate([tok])
    poisoned = batch.tokens.clone()
    poisoned[~batch.valid] = 1e4
    wl = batch.wavelength.clone()
    wl[~batch.valid] = 123.0
    with torch.no_grad():
        a = model.encode(batch.tokens, batch.wavelength, batch.valid)
        b = model.encode(poisoned, wl, batch.valid)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert (a[~batch.valid] == 0).all()


def test_no_valid_token_gives_zeros_not_nan():
    model = _model()
    tokens = torch.randn(2, 30, 22)
    valid = torch.ones(2, 30, dtype=torch.bool)
    valid[1] = False
    wl = torch.linspace(4000, 8000, 30).expand(2, 30)
    emb = model.embed(tokens, wl, valid)
    assert torch.isfinite(emb).all() and (emb[1] == 0).all()
    model.train()
    loss = model.reconstruct(tokens, wl, valid).sum()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_loss_ignores_unmasked_padded_and_invalid_pixels():
    b, t, p = 2, 6, 4
    target = torch.randn(b, t, p + 2)
    pred = target.clone()
    loss_mask = torch.zeros(b, t, dtype=torch.bool)
    loss_mask[0, 1] = loss_mask[1, 3] = True
    pixel_valid = torch.ones(b, t, p, dtype=torch.bool)
    pixel_valid[0, 1, 2:] = False
    pred[0, 0] += 100.0          # unmasked token
    pred[1, 5] += 100.0          # padding / unmasked
    pred[0, 1, 2 + 2:] += 100.0  # invalid pixels inside a masked token
    assert masked_reconstruction_loss(pred, target, loss_mask, pixel_valid) == 0
    pred[0, 1, 0] += 2.0         # mu of a masked token: one of 4 + 6 target elements
    loss = masked_reconstruction_loss(pred, target, loss_mask, pixel_valid)
    assert loss.item() == pytest.approx(4.0 / 10)
    empty = masked_reconstruction_loss(pred.requires_grad_(), target, torch.zeros(b, t, dtype=torch.bool))
    assert empty.item() == 0.0
    empty.backward()


def test_one_step_lowers_loss_on_real_batch():
    model = _model()
    model.train()
    items = [(i, tokenize(*sdss_arrays(path))) for i, path in enumerate(real_sdss_files(limit=12)[:6])
             if tokenize_ok(path)]
    items.append((99, _real_tokens()))
    batch = Collator(seed=0)(items)
    assert batch.loss_mask.any()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = model.loss(batch)
    for _ in range(3):
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    assert model.loss(batch).item() < first.item()


def tokenize_ok(path):
    wave, flux, ivar, bad = sdss_arrays(path)
    return ((ivar > 0) & ~bad).sum() >= 20


def test_local_pe_does_not_cross_invalid_gap():
    model = _model(validity_mask=True)
    tok = _synthetic_tokens(600, 4)
    batch = collate([tok])
    valid = batch.valid.clone()
    valid[0, 20] = False
    block = model.blocks[0].attn
    x = torch.randn(1, tok.n_tokens, 128)
    with torch.no_grad():
        base = block(x, valid)
        x2 = x.clone()
        x2[0, 20] += 50.0
        moved = block(x2, valid)
    torch.testing.assert_close(base, moved)


def test_ablation_switches():
    full = _model()
    no_pe = _model(local_pe=False)
    assert no_pe.get_num_params() == full.get_num_params() - 4 * 4 * 128
    tok = _real_tokens()
    longer = _synthetic_tokens(7000, 5)
    alone, batch = collate([tok]), collate([longer, tok])
    open_model = _model(validity_mask=False)
    with torch.no_grad():
        a = open_model.embed(alone.tokens, alone.wavelength, alone.valid)
        b = open_model.embed(batch.tokens, batch.wavelength, batch.valid)[1:]
        c = _model(wavelength_encoding=False).embed(alone.tokens, alone.wavelength + 500, alone.valid)
        d = _model(wavelength_encoding=False).embed(alone.tokens, alone.wavelength, alone.valid)
    assert not torch.allclose(a, b, atol=1e-4)  # without the mask, padding leaks in
    torch.testing.assert_close(c, d)             # without the encoding, wavelength is ignored


def _segment_attention(q, k, v, cu_q, cu_k, max_q, max_k, **kwargs):
    """Reference varlen attention: SDPA per cu_seqlens segment. (N, H, hs) layout."""
    out = torch.empty_like(q)
    for s, e in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True):
        seg = [t[s:e].transpose(0, 1)[None] for t in (q, k, v)]
        out[s:e] = F.scaled_dot_product_attention(*seg)[0].transpose(0, 1)
    return out


def _fake_varlen(impl, monkeypatch):
    """Install a fake flash-attn / torch varlen kernel; returns the list of cu_seqlens it saw."""
    calls = []

    def fake(*args, **kwargs):
        calls.append(args[3].tolist())
        return _segment_attention(*args, **kwargs)

    if impl == "flash_attn":
        monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_varlen_func=fake))
    else:
        monkeypatch.setattr("omnispectra.model._torch_varlen", lambda: fake)
    return calls


def _mixed_batch():
    """Three lengths, one with a run of invalid tokens in the middle (conv neighbours)."""
    return collate([_synthetic_tokens(5000, 6, n_bad=200), _real_tokens(), _synthetic_tokens(900, 7)])


@pytest.mark.parametrize("impl", ["flash_attn", "torch_varlen"])
def test_packed_varlen_branch_matches_sdpa(impl, monkeypatch):
    calls = _fake_varlen(impl, monkeypatch)
    batch = _mixed_batch()
    assert not batch.valid[0].all() and batch.valid[0, -1]  # a gap inside spectrum 0
    sdpa = _model(attention="sdpa")
    packed = _model(attention=impl)
    with torch.no_grad():
        ref = sdpa.encode(batch.tokens, batch.wavelength, batch.valid)
        out = packed.encode(batch.tokens, batch.wavelength, batch.valid)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    counts = batch.valid.sum(1).tolist()
    # one packing per forward, shared by all layers
    assert calls == [[0, counts[0], counts[0] + counts[1], sum(counts)]] * TINY.n_layers


def test_packed_layout_gradients_match_padded(monkeypatch):
    _fake_varlen("torch_varlen", monkeypatch)
    batch = Collator(seed=3)([(0, _synthetic_tokens(3000, 6, n_bad=150)), (1, _synthetic_tokens(700, 7))])
    grads = {}
    for impl in ("sdpa", "torch_varlen"):
        model = _model(attention=impl).train()
        model.loss(batch).backward()
        grads[impl] = torch.cat([p.grad.flatten() for p in model.parameters()])
    torch.testing.assert_close(grads["torch_varlen"], grads["sdpa"], atol=1e-5, rtol=1e-4)


def test_packed_layout_without_validity_mask(monkeypatch):
    _fake_varlen("torch_varlen", monkeypatch)
    batch = _mixed_batch()
    with torch.no_grad():
        ref = _model(attention="sdpa", validity_mask=False).encode(batch.tokens, batch.wavelength,
                                                                    batch.valid)
        out = _model(attention="torch_varlen", validity_mask=False).encode(
            batch.tokens, batch.wavelength, batch.valid)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_auto_resolves_to_sdpa_on_cpu():
    from omnispectra.model import attention_backends

    model = _model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.attention_impl(torch.zeros(1, 2, 22)) == "sdpa"
    assert attention_backends()["sdpa"]
    dropout = _model(attention="torch_varlen", dropout=0.1).train()
    assert dropout.attention_impl(torch.zeros(1, 2, 22)) == "sdpa"  # varlen takes no attention dropout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_attention_paths_agree():
    from omnispectra.model import attention_backends

    tok = _real_tokens()
    batch = collate([_synthetic_tokens(7800, 8, n_bad=300), tok, _synthetic_tokens(560, 9)]).to("cuda")
    impls = ["sdpa"] + [name for name, ok in attention_backends().items() if ok and name != "sdpa"]
    outs = {}
    for impl in impls:
        model = _model(attention=impl).cuda()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            outs[impl] = model.embed(batch.tokens, batch.wavelength, batch.valid).float()
    for impl, out in outs.items():
        torch.testing.assert_close(out, outs["sdpa"], atol=3e-2, rtol=3e-2, msg=impl)


def test_config_round_trip_and_validation():
    cfg = OmniSpectraConfig.from_preset("small", local_pe=False)
    assert OmniSpectraConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="divisible"):
        OmniSpectraConfig(dim=100, n_heads=3)
    with pytest.raises(ValueError, match="unknown preset"):
        OmniSpectraConfig.from_preset("huge")
    with pytest.raises(ValueError, match="unknown config"):
        OmniSpectraConfig.from_dict({"dim": 8, "bogus": 1})
    assert math.isclose(TINY.mask_ratio, 0.75)


def test_forward_flops_matches_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    from omnispectra.model import forward_flops

    model = _model(attention="sdpa", local_pe=False)
    cfg = model.config
    tok = _synthetic_tokens(1500, 3)
    batch = collate([tok])
    n = tok.n_tokens
    assert batch.valid.all()  # no padding: the counter sees exactly the useful work
    with torch.no_grad(), FlopCounterMode(display=False) as linear:
        model.reconstruct(batch.tokens, batch.wavelength, batch.valid)
    # the counter skips masked SDPA on CPU: count one layer's attention as explicit matmuls
    q = torch.randn(cfg.n_heads, n, cfg.dim // cfg.n_heads)
    with FlopCounterMode(display=False) as attention:
        (q @ q.transpose(1, 2)).softmax(-1) @ q
    expected = linear.get_total_flops() + cfg.n_layers * attention.get_total_flops()
    assert forward_flops(cfg, [n], head=True) == pytest.approx(expected, rel=1e-6)
    assert forward_flops(cfg, [100, 200]) < forward_flops(cfg, [300])  # attention is quadratic


def test_compiled_encoder_matches_eager(monkeypatch):
    _fake_varlen("torch_varlen", monkeypatch)
    batch = _mixed_batch()
    for impl in ("sdpa", "torch_varlen"):
        ref = _model(attention=impl)
        compiled = _model(attention=impl).compile_encoder(backend="eager")  # dynamo tracing, no codegen
        with torch.no_grad():
            torch.testing.assert_close(compiled.embed(batch.tokens, batch.wavelength, batch.valid),
                                       ref.embed(batch.tokens, batch.wavelength, batch.valid))
