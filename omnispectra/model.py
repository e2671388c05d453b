"""The OmniSpectra masked transformer, in one file.

Paper sections *Embedding*, *Transformer Block* and *Reconstruction Loss*:

- data embedding ``Linear(p+2 -> D)`` (trunc-normal, std ``D**-0.5`` cut at 3 std) plus a
  sinusoidal encoding of each patch's mean wavelength (``omega_i = 10000**(-2i/D)``,
  sin on even and cos on odd channels);
- pre-LN blocks ``Z' = Z + MHA(LN(Z))``, ``Z_out = Z' + FFN(LN(Z'))``, FFN width 4D
  with GELU, biases everywhere, no final LayerNorm (the layout that counts the paper's
  42.6M parameters);
- validity-aware attention: a padded or invalid token is neither attended nor
  attending (its output is zero), fully-invalid rows give zeros, never NaN;
- a local positional embedding: a depthwise ``Conv1d`` (kernel 3) over the token axis
  on V, per head and channel, added to the attention output before ``W_O``; invalid
  tokens are zeroed before the conv so nothing bleeds into valid neighbours;
- a linear reconstruction head ``D -> p+2`` and a masked reconstruction loss: the paper's
  MSE, made robust with a Huber loss (``delta`` = :data:`HUBER_DELTA`), because the
  collator's re-standardization over visible pixels leaves masked targets heavy-tailed.

Two layouts compute the same function:

- *padded* (CPU, or no variable-length kernel): ``(B, T, D)`` activations and
  ``scaled_dot_product_attention`` with a key mask;
- *packed* (CUDA under bf16/fp16 autocast when a kernel is available): the valid tokens
  of the whole batch are gathered once into ``(N, D)`` and every layer runs on them, so
  padding costs nothing anywhere (linear layers included). Attention goes through a
  variable-length kernel with ``cu_seqlens``: flash-attn's ``flash_attn_varlen_func``
  when that package is installed, else PyTorch's ``torch.nn.attention.varlen.varlen_attn``.
  The depthwise conv becomes three taps whose neighbours are switched off where the
  neighbouring slot is invalid or belongs to another spectrum (:class:`PackedLayout`).
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "OmniSpectraConfig",
    "PRESETS",
    "OmniSpectra",
    "sinusoidal_encoding",
    "masked_reconstruction_loss",
    "reconstruction_weights",
    "HUBER_DELTA",
    "attention_backends",
    "forward_flops",
    "PackedLayout",
]

ATTENTION_IMPLS = ("auto", "sdpa", "flash_attn", "torch_varlen")

HUBER_DELTA = 1.0
"""Huber threshold of the pretraining loss, in re-standardized flux units (the visible
valid pixels of a masked spectrum have standard deviation 1, see
:mod:`omnispectra.collate`): errors within one visible-pixel sigma are penalized
quadratically like the paper's MSE, larger ones linearly, so a masked H-alpha or
Lyman-alpha chunk tens of sigma out pulls with the gradient of a 1-sigma error instead of
dominating the batch."""


@dataclass
class OmniSpectraConfig:
    """Hyper-parameters of the encoder. Defaults are the paper's model."""

    patch_size: int = 20          # pixels per patch, p
    stride: int = 10              # pixels between patch starts
    dim: int = 768                # embedding width D
    n_layers: int = 6
    n_heads: int = 6
    mlp_ratio: int = 4            # FFN width = mlp_ratio * D
    dropout: float = 0.0
    local_pe: bool = True         # depthwise-conv local positional embedding on V
    wavelength_encoding: bool = True
    validity_mask: bool = True    # False: attend to every slot, padding included (ablation)
    attention: str = "auto"       # one of ATTENTION_IMPLS
    mask_ratio: float = 0.75      # gamma of the pretraining chunk masking
    extra: dict[str, Any] = field(default_factory=dict)  # free-form provenance

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.dim % 2:
            raise ValueError(f"dim must be even for the sinusoidal encoding, got {self.dim}")
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, got {self.attention!r}")

    @property
    def token_dim(self) -> int:
        """Length of one token, ``p + 2``."""
        return self.patch_size + 2

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> OmniSpectraConfig:
        """Config of a named preset (``tiny``, ``small``, ``paper``) with overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
        return replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON- and ``weights_only``-safe)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> OmniSpectraConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**values)


PRESETS: dict[str, OmniSpectraConfig] = {
    "tiny": OmniSpectraConfig(dim=128, n_layers=4, n_heads=4),
    "small": OmniSpectraConfig(dim=256, n_layers=4, n_heads=4),
    "paper": OmniSpectraConfig(dim=768, n_layers=6, n_heads=6),
}


def sinusoidal_encoding(wavelength: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal encoding of wavelengths (Angstrom): ``(..., ) -> (..., dim)``.

    Channel ``2i`` is ``sin(lambda * omega_i)`` and ``2i+1`` is ``cos(lambda * omega_i)``
    with ``omega_i = 10000**(-2i/dim)``. Computed in float32 (or the input's wider
    dtype) with autocast disabled: in bf16, wavelengths near 16,000 A would be
    quantized in steps of 64-128 A.
    """
    dtype = torch.float64 if wavelength.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=wavelength.device.type, enabled=False):
        i = torch.arange(dim // 2, device=wavelength.device, dtype=dtype)
        omega = 10000.0 ** (-2.0 * i / dim)                           # (D/2,)
        angle = wavelength.to(dtype)[..., None] * omega                # (..., D/2)
        enc = torch.stack([angle.sin(), angle.cos()], dim=-1)          # (..., D/2, 2)
        return enc.flatten(-2)                                         # (..., D)


# ---------------------------------------------------------------------------------------
# attention kernels


def _flash_attn_varlen():
    """flash-attn's ``flash_attn_varlen_func`` if the package is installed, else None."""
    try:
        return importlib.import_module("flash_attn").flash_attn_varlen_func
    except (ImportError, AttributeError):
        return None


def _torch_varlen():
    """PyTorch's ``varlen_attn`` (PyTorch >= 2.10) if present, else None."""
    try:
        return importlib.import_module("torch.nn.attention.varlen").varlen_attn
    except (ImportError, AttributeError):
        return None


def attention_backends() -> dict[str, bool]:
    """Which attention implementations this installation can use."""
    cuda = torch.cuda.is_available()
    return {
        "sdpa": True,
        "torch_varlen": cuda and _torch_varlen() is not None,
        "flash_attn": cuda and _flash_attn_varlen() is not None,
    }


def _autocast_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls on ``x``'s device will run in (autocast's, else ``x``'s own)."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


@dataclass
class PackedLayout:
    """Where the valid tokens of a padded ``(B, T)`` batch sit once packed into ``(N,)``.

    Attributes
    ----------
    index : Tensor (N,)
        Flat ``b * T + t`` slot of every packed token, in order.
    cu_seqlens : Tensor (B+1,) int32
        Offsets of each spectrum's tokens (the varlen kernels' ``cu_seqlens``).
    max_len : int
        Most valid tokens of one spectrum.
    has_prev, has_next : Tensor (N,) bool
        Whether the slot before / after a token is valid in the same spectrum, i.e.
        whether the padded layout's conv would see a non-zero neighbour there.
    """

    index: torch.Tensor
    cu_seqlens: torch.Tensor
    max_len: int
    has_prev: torch.Tensor
    has_next: torch.Tensor

    @classmethod
    def from_valid(cls, valid: torch.Tensor) -> PackedLayout:
        n_batch = valid.shape[0]
        flat = valid.reshape(-1)
        index = flat.nonzero().squeeze(1)                                   # (N,)
        counts = valid.sum(1, dtype=torch.int32)                             # (B,)
        cu_seqlens = F.pad(counts.cumsum(0, dtype=torch.int32), (1, 0))       # (B+1,)
        prev = F.pad(valid[:, :-1], (1, 0)).reshape(-1)[index]               # slot t-1 valid (t > 0)
        nxt = F.pad(valid[:, 1:], (0, 1)).reshape(-1)[index]                 # slot t+1 valid
        max_len = int(counts.max()) if n_batch else 0
        return cls(index, cu_seqlens, max_len, prev, nxt)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, ...) -> (N, ...)``."""
        return x.reshape(-1, *x.shape[2:])[self.index]

    def unpack(self, x: torch.Tensor, n_batch: int, n_tok: int) -> torch.Tensor:
        """``(N, ...) -> (B, T, ...)`` with zeros on the slots that were not packed."""
        full = x.new_zeros(n_batch * n_tok, *x.shape[1:])
        full[self.index] = x
        return full.view(n_batch, n_tok, *x.shape[1:])

    def depthwise_conv3(self, x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
        """``conv`` (kernel 3, padding 1, depthwise) over each spectrum's slots, ``(N, D)``.

        Equal to running ``conv`` on the padded layout with invalid slots zeroed.
        """
        weight = conv.weight[:, 0, :].to(x.dtype)                            # (D, 3)
        prev = F.pad(x[:-1], (0, 0, 1, 0)) * self.has_prev[:, None].to(x.dtype)
        nxt = F.pad(x[1:], (0, 0, 0, 1)) * self.has_next[:, None].to(x.dtype)
        return prev * weight[:, 0] + x * weight[:, 1] + nxt * weight[:, 2] + conv.bias.to(x.dtype)


def _varlen_attention(q, k, v, layout: PackedLayout, impl: str) -> torch.Tensor:
    """Attention within each spectrum of a packed batch; q, k, v and result ``(N, H, hs)``."""
    args = (q, k, v, layout.cu_seqlens, layout.cu_seqlens, layout.max_len, layout.max_len)
    if impl == "flash_attn":
        return _flash_attn_varlen()(*args)
    if impl == "torch_varlen":
        return _torch_varlen()(*args)
    raise ValueError(f"unknown packed attention implementation {impl!r}")


class SelfAttention(nn.Module):
    """Multi-head self-attention with validity masking and a local positional embedding."""

    def __init__(self, config: OmniSpectraConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.head_size = config.dim // config.n_heads
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)           # W_O
        # depthwise over (head, channel): one 3-tap filter per channel of V
        self.local_pe = (nn.Conv1d(config.dim, config.dim, kernel_size=3, padding=1, groups=config.dim)
                         if config.local_pe else None)
        self.dropout = config.dropout
        self.use_validity = config.validity_mask

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v with a head axis: ``(..., D) -> 3 x (..., H, hs)``."""
        shape = (*x.shape[:-1], self.n_heads, self.head_size)
        return tuple(t.reshape(shape) for t in self.qkv(x).chunk(3, dim=-1))

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Padded layout: ``x (B, T, D)``, ``valid (B, T)`` -> ``(B, T, D)``."""
        n_batch, n_tok, dim = x.shape
        q, k, v = self._heads(x)                                          # (B, T, H, hs)
        attend = valid if self.use_validity else torch.ones_like(valid)
        v = v * attend[..., None, None].to(v.dtype)                      # invalid V -> 0 (for the conv)
        # a sample with no valid token keeps all keys to avoid a NaN softmax; its
        # outputs are zeroed below anyway
        keys = attend | ~attend.any(1, keepdim=True)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            attn_mask=keys[:, None, None, :], dropout_p=self.dropout if self.training else 0.0,
        ).transpose(1, 2).reshape(n_batch, n_tok, dim)
        if self.local_pe is not None:
            pe = self.local_pe(v.reshape(n_batch, n_tok, dim).transpose(1, 2))  # (B, D, T)
            y = y + pe.transpose(1, 2)
        y = y * attend[..., None].to(y.dtype)                            # no output on invalid slots
        return self.proj(y)

    def forward_packed(self, x: torch.Tensor, layout: PackedLayout, impl: str) -> torch.Tensor:
        """Packed layout: ``x (N, D)`` of the attended tokens only -> ``(N, D)``."""
        q, k, v = self._heads(x)                                          # (N, H, hs)
        y = _varlen_attention(q, k, v, layout, impl).to(x.dtype).flatten(1)
        if self.local_pe is not None:
            y = y + layout.depthwise_conv3(v.flatten(1), self.local_pe)
        return self.proj(y)


class FeedForward(nn.Module):
    def __init__(self, config: OmniSpectraConfig) -> None:
        super().__init__()
        hidden = config.mlp_ratio * config.dim
        self.fc = nn.Linear(config.dim, hidden)
        self.out = nn.Linear(hidden, config.dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.out(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, config: OmniSpectraConfig) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.dim)
        self.attn = SelfAttention(config)
        self.ln_ffn = nn.LayerNorm(config.dim)
        self.ffn = FeedForward(config)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x), valid)
        return x + self.ffn(self.ln_ffn(x))

    def forward_packed(self, x: torch.Tensor, layout: PackedLayout, impl: str) -> torch.Tensor:
        x = x + self.attn.forward_packed(self.ln_attn(x), layout, impl)
        return x + self.ffn(self.ln_ffn(x))


class OmniSpectra(nn.Module):
    """The OmniSpectra encoder with its reconstruction head.

    Inputs everywhere are a padded batch: ``tokens (B, T, p+2)``, ``wavelength (B, T)``
    in Angstrom and ``valid (B, T)`` (see :class:`omnispectra.collate.Batch`).
    """

    def __init__(self, config: OmniSpectraConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or OmniSpectraConfig()
        self.info: dict[str, Any] = {}  # provenance of loaded weights (see omnispectra.pretrained)
        self.embed_tokens = nn.Linear(config.token_dim, config.dim)    # W_data
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.head = nn.Linear(config.dim, config.token_dim)            # W_out
        self.apply(self._init_weights)
        std = config.dim ** -0.5
        nn.init.trunc_normal_(self.embed_tokens.weight, std=std, a=-3 * std, b=3 * std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02, a=-0.06, b=0.06)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def get_num_params(self) -> int:
        """Number of parameters (encoder and reconstruction head)."""
        return sum(p.numel() for p in self.parameters())

    def encode(self, tokens: torch.Tensor, wavelength: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Hidden states of the last block, ``(B, T, D)``; zero on invalid tokens."""
        valid = valid.bool()
        impl = self.attention_impl(tokens)
        if impl != "sdpa":
            return self._encode_packed(tokens, wavelength, valid, impl)
        x = self._embed(tokens, wavelength)                             # (B, T, D)
        for block in self.blocks:
            x = block(x, valid)
        return x * valid[..., None].to(x.dtype)

    def attention_impl(self, tokens: torch.Tensor) -> str:
        """The attention path a forward pass on ``tokens`` takes (``sdpa`` = padded layout).

        ``auto`` packs on CUDA under bf16/fp16 when a varlen kernel is installed; attention
        dropout during training needs SDPA (the varlen kernels here take none).
        """
        impl = self.config.attention
        if impl == "auto":
            impl = "sdpa"
            if tokens.is_cuda and _autocast_dtype(tokens) in (torch.float16, torch.bfloat16):
                if _flash_attn_varlen() is not None:
                    impl = "flash_attn"
                elif _torch_varlen() is not None:
                    impl = "torch_varlen"
        if self.training and self.config.dropout > 0:
            impl = "sdpa"
        return impl

    def _embed(self, tokens: torch.Tensor, wavelength: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(tokens)
        if self.config.wavelength_encoding:
            x = x + sinusoidal_encoding(wavelength, self.config.dim).to(x.dtype)
        return x

    def _encode_packed(self, tokens, wavelength, valid, impl: str) -> torch.Tensor:
        attend = valid if self.config.validity_mask else torch.ones_like(valid)
        layout = PackedLayout.from_valid(attend)
        x = self._embed(layout.pack(tokens), layout.pack(wavelength))   # (N, D)
        for block in self.blocks:
            x = block.forward_packed(x, layout, impl)
        x = layout.unpack(x, *valid.shape)
        return x * valid[..., None].to(x.dtype)

    def compile_encoder(self, **kwargs: Any) -> OmniSpectra:
        """``torch.compile`` :meth:`encode` in place (dynamic shapes: batches vary in length).

        Fuses the element-wise work around the matmuls (its speed-up is measured by
        ``benchmarks/run.py``; see ``docs/performance.rst``). The first batches pay the
        compilation.
        """
        kwargs.setdefault("dynamic", True)
        self.encode = torch.compile(self.encode, **kwargs)
        return self

    def pool(self, hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Mean over valid tokens: ``(B, T, D) -> (B, D)`` (zeros for a sample with none)."""
        weight = valid.to(hidden.dtype)[..., None]
        return (hidden * weight).sum(1) / weight.sum(1).clamp_min(1.0)

    def embed(self, tokens: torch.Tensor, wavelength: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """One embedding per spectrum, ``(B, D)``: the valid-token mean of :meth:`encode`."""
        return self.pool(self.encode(tokens, wavelength, valid), valid)

    def reconstruct(self, tokens: torch.Tensor, wavelength: torch.Tensor,
                    valid: torch.Tensor) -> torch.Tensor:
        """Predicted tokens ``(B, T, p+2)`` for every slot."""
        return self.head(self.encode(tokens, wavelength, valid))

    forward = reconstruct

    def loss(self, batch: Any, huber_delta: float | None = HUBER_DELTA) -> torch.Tensor:
        """Masked reconstruction loss of a :class:`~omnispectra.collate.Batch` (Huber by
        default; ``huber_delta=None`` gives the plain MSE)."""
        pred = self.reconstruct(batch.tokens, batch.wavelength, batch.valid)
        return masked_reconstruction_loss(pred, batch.target, batch.loss_mask, batch.pixel_valid,
                                          huber_delta=huber_delta)


def forward_flops(config: OmniSpectraConfig, n_tokens: Any, head: bool = False) -> float:
    """Useful floating-point operations of one forward pass (matmuls and attention).

    Counts ``2 * m * n * k`` per matrix product on the *valid* tokens only, so the
    figure is the work a padding-free kernel must do (padding is waste, not work).
    Element-wise ops, LayerNorm, softmax and the depthwise conv are left out (under 1%
    at the presets' widths). A training step is about three times this.

    Parameters
    ----------
    config : OmniSpectraConfig
    n_tokens : int or array of int
        Valid tokens of each spectrum.
    head : bool
        Include the reconstruction head (pretraining) or not (embedding).
    """
    import numpy as np

    n = np.atleast_1d(np.asarray(n_tokens, dtype=np.float64))
    dim, width = config.dim, config.mlp_ratio * config.dim
    per_layer = 4 * dim * dim + 2 * dim * width                  # qkv + W_O + FFN
    per_token = 2.0 * (config.token_dim * dim + config.n_layers * per_layer
                       + (dim * config.token_dim if head else 0))
    attention = config.n_layers * 4.0 * dim * float((n ** 2).sum())  # QK^T and AV
    return per_token * float(n.sum()) + attention


def reconstruction_weights(target: torch.Tensor, loss_mask: torch.Tensor,
                           pixel_valid: torch.Tensor | None = None) -> torch.Tensor:
    """0/1 float weights (B, T, p+2) of the elements the reconstruction loss averages
    over: ``mu``, ``sigma`` and the valid pixels of masked valid tokens."""
    weight = loss_mask[..., None].expand_as(target).to(torch.float32)  # (B, T, p+2)
    if pixel_valid is not None:
        weight = weight.clone()
        weight[..., 2:] *= pixel_valid.to(torch.float32)
    return weight


def masked_reconstruction_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    loss_mask: torch.Tensor,
    pixel_valid: torch.Tensor | None = None,
    huber_delta: float | None = None,
) -> torch.Tensor:
    """Mean squared error (or Huber loss) over the valid elements of masked, valid tokens.

    The paper's L_recon averages over masked valid tokens. Here the average is over
    their *elements*: ``mu`` and ``sigma`` of every such token, and its flux values only
    where the pixel is valid (a chip gap or padded tail inside a masked token is not a
    target, so the model never learns to predict zeros there). A batch without any
    target gives a zero loss that still has a gradient path.

    Parameters
    ----------
    pred, target : Tensor (B, T, p+2)
    loss_mask : Tensor (B, T) bool
        Masked and valid tokens.
    pixel_valid : Tensor (B, T, p) bool, optional
        Valid pixels; all pixels count when omitted.
    huber_delta : float, optional
        Use the Huber loss with this threshold instead of the MSE, scaled by 2 so that it
        equals the squared error for ``|error| <= delta`` and grows as
        ``2 delta |error| - delta**2`` beyond (pretraining uses :data:`HUBER_DELTA`).
    """
    weight = reconstruction_weights(target, loss_mask, pixel_valid)
    if huber_delta is None:
        err = (pred.float() - target.float()) ** 2
    else:
        if not huber_delta > 0:
            raise ValueError(f"huber_delta must be positive, got {huber_delta}")
        err = 2.0 * F.huber_loss(pred.float(), target.float(), reduction="none", delta=float(huber_delta))
    total = weight.sum()
    if total == 0:
        return (pred * 0.0).sum()
    return (err * weight).sum() / total
