"""Training downstream heads with the same Lightning machinery as pretraining.

:class:`ProbeModule` wraps any ``nn.Module`` that maps an input batch to outputs: a
:class:`~omnispectra.probes.Probe` head on precomputed embeddings (frozen encoder, the
fast default), an encoder + head (``finetune=True``: the batch is a
:class:`~omnispectra.collate.Batch` of tokens), or a supervised baseline network on
resampled flux (:mod:`omnispectra.evaluation.baselines`). Losses:

- classification: cross-entropy with per-class weights
  (:func:`~omnispectra.probes.class_weights`); the training loader draws spectra with a
  :func:`~omnispectra.probes.class_balanced_sampler` (paper, *Source Classification*);
- regression: mean squared error on normalized targets over the labelled entries only
  (a missing label -- NaN -- contributes nothing: it is never learned).

:func:`fit` builds the DataLoader and one ``lightning.Trainer`` and runs it for a number
of optimizer steps (the paper's zero-shot = 100, few-shot = 500 steps at batch 64) or
epochs (supervised baselines: 10 epochs).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..collate import Batch, collate
from ..probes import class_balanced_sampler, class_weights

__all__ = ["ProbeModule", "EncoderWithHead", "fit", "fit_probe_on_embeddings", "fit_finetune",
           "TokenTargetDataset", "REGRESSION_LOSSES"]

#: Element-wise regression losses of the residual, by name (see :class:`ProbeModule`).
REGRESSION_LOSSES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mse": torch.square,
    "l1": torch.abs,
}


class EncoderWithHead(nn.Module):
    """An encoder and a head: ``head(encoder.embed(tokens, wavelength, valid))`` (fine-tuning)."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.head(self.encoder.embed(batch.tokens, batch.wavelength, batch.valid))


class ProbeModule(L.LightningModule):
    """LightningModule training ``net`` on ``(inputs, targets)`` batches.

    Parameters
    ----------
    net : nn.Module
        Maps the inputs of a batch to ``(B, n_out)`` outputs.
    kind : {"classification", "regression"}
    lr, weight_decay : float
        AdamW settings (probes: 1e-4; supervised baselines: 1e-3).
    weights : sequence of float, optional
        Class weights of the cross-entropy.
    loss : {"mse", "l1"}
        Regression loss on the normalized targets: squared error, or absolute error (its
        minimum is the conditional median: what a mean absolute error rewards, and less
        pulled by a few outlying labels).
    """

    def __init__(self, net: nn.Module, kind: str, lr: float = 1e-4, weight_decay: float = 0.0,
                 weights: Sequence[float] | None = None, loss: str = "mse") -> None:
        super().__init__()
        if kind not in ("classification", "regression"):
            raise ValueError(f"kind must be 'classification' or 'regression', got {kind!r}")
        if loss not in REGRESSION_LOSSES:
            raise ValueError(f"loss must be one of {sorted(REGRESSION_LOSSES)}, got {loss!r}")
        self.save_hyperparameters(ignore=["net", "weights"])
        self.net = net
        self.kind = kind
        self.register_buffer("class_weight", None if weights is None
                             else torch.as_tensor(np.asarray(weights, dtype=np.float32)))

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.net(inputs)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "classification":
            return F.cross_entropy(out.float(), y.long(), weight=self.class_weight)
        y = y.float().reshape(out.shape)
        ok = torch.isfinite(y)
        if not ok.any():
            return (out * 0.0).sum()
        err = REGRESSION_LOSSES[self.hparams.loss](out.float() - torch.where(ok, y, torch.zeros_like(y)))
        return (err * ok).sum() / ok.sum()

    def training_step(self, batch: tuple[Any, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, y = batch
        loss = self.loss(self(inputs), y)
        self.log("train_loss", loss, batch_size=int(y.shape[0]), prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


class TokenTargetDataset(torch.utils.data.Dataset):
    """``(Tokens, target)`` items for fine-tuning; collated into ``(Batch, targets)``."""

    def __init__(self, tokens: Sequence[Any], targets: np.ndarray) -> None:
        self.tokens = list(tokens)
        self.targets = torch.as_tensor(np.asarray(targets))
        if len(self.tokens) != len(self.targets):
            raise ValueError("tokens and targets differ in length")

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor]:
        return self.tokens[i], self.targets[i]

    @staticmethod
    def collate(items: Sequence[tuple[Any, torch.Tensor]]) -> tuple[Batch, torch.Tensor]:
        return collate([t for t, _ in items]), torch.stack([y for _, y in items])


@contextlib.contextmanager
def _threads(n: int | None):
    """Run with ``n`` intra-op CPU threads (restored afterwards); None leaves them alone.

    Small heads are dominated by thread synchronization: on a busy 2-core CPU one step
    of a linear probe took ~50 ms with 2 threads and ~1.5 ms with one.
    """
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if n is not None:
            torch.set_num_threads(before)


@contextlib.contextmanager
def _quiet_lightning():
    """Silence Lightning's informational log lines (device summary, tips) during a fit."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def fit(
    net: nn.Module,
    dataset: torch.utils.data.Dataset,
    kind: str,
    labels: np.ndarray | None = None,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int = 64,
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    balance: bool = True,
    seed: int = 0,
    collate_fn: Callable | None = None,
    accelerator: str = "cpu",
    precision: str = "32-true",
    num_threads: int | None = -1,
    loss: str = "mse",
) -> nn.Module:
    """Train ``net`` on ``dataset`` (items ``(inputs, target)``) with one Lightning Trainer.

    Exactly one of ``steps`` (optimizer steps; the loader cycles as needed) and
    ``epochs`` must be given. For classification ``labels`` (the integer class of every
    item) gives the class weights and, with ``balance=True``, the weighted sampler.
    ``num_threads``: CPU threads while training (-1: one thread for networks under
    one million trainable parameters, else unchanged; None: unchanged). ``loss``: the
    regression loss (:class:`ProbeModule`).
    Returns ``net`` trained, in eval mode, on the CPU.
    """
    if (steps is None) == (epochs is None):
        raise ValueError("give exactly one of steps and epochs")
    if len(dataset) == 0:
        raise ValueError("cannot train on an empty dataset")
    torch.manual_seed(seed)
    weights = None
    if kind == "classification":
        if labels is None:
            raise ValueError("classification needs the labels of the training items")
        weights = class_weights(labels, n_classes=getattr(net, "n_out", None) or int(np.max(labels)) + 1)
    generator = torch.Generator().manual_seed(seed)
    # step-based runs draw all their batches in one epoch (no per-epoch overhead on tiny sets)
    n_draw = steps * batch_size if steps is not None else None
    if kind == "classification" and balance:
        sampler = class_balanced_sampler(labels, weights, num_samples=n_draw, seed=seed)
    else:
        sampler = torch.utils.data.RandomSampler(dataset, num_samples=n_draw, generator=generator)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                         collate_fn=collate_fn, drop_last=False, num_workers=0)
    module = ProbeModule(net, kind, lr=lr, weight_decay=weight_decay, weights=weights, loss=loss)
    if num_threads == -1:
        n_params = sum(p.numel() for p in net.parameters() if p.requires_grad)
        num_threads = 1 if n_params < 1_000_000 else None
    with _quiet_lightning(), _threads(num_threads), warnings.catch_warnings():
        # in-memory tensors need no loader workers; the device note is not news either
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=DeprecationWarning)
        trainer = L.Trainer(
            max_steps=steps if steps is not None else -1,
            max_epochs=epochs if epochs is not None else 1,
            accelerator=accelerator, devices=1, precision=precision,
            logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, log_every_n_steps=max(1, min(50, len(loader))),
            num_sanity_val_steps=0, deterministic=False,
        )
        trainer.fit(module, train_dataloaders=loader)
    return net.cpu().eval()


def _training_targets(probe: Any, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(y, labels)``: class indices (also the sampler's labels), or regression targets
    normalized with the training-set statistics (stored in ``probe``; labels None)."""
    if probe.kind == "classification":
        y = np.asarray(targets, dtype=np.int64).ravel()
        return y, y
    return probe.fit_normalization(np.asarray(targets, dtype=np.float64)).astype(np.float32), None


def fit_probe_on_embeddings(probe: Any, embeddings: np.ndarray, targets: np.ndarray, **kwargs: Any):
    """Train a :class:`~omnispectra.probes.Probe` head on precomputed (frozen-encoder) embeddings.

    ``targets``: integer classes ``(N,)`` for classification; physical values
    ``(N, n_targets)`` for regression (NaN = missing), normalized here with the
    training-set statistics (stored in the probe for de-normalization).

    The members of an ensemble probe (``probe.members > 1``) are trained one after the
    other, each on its own loss, member ``k`` with seed ``seed + k`` (batch order and
    dropout; their initializations already differ).
    """
    from ..probes import HeadEnsemble

    x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
    y, labels = _training_targets(probe, targets)
    ds = torch.utils.data.TensorDataset(x, torch.as_tensor(y))
    if not isinstance(probe.head, HeadEnsemble):
        fit(probe, ds, probe.kind, labels=labels, **kwargs)
        return probe
    seed = kwargs.pop("seed", 0)
    for k, member in enumerate(probe.head.members):
        member.n_out = probe.n_out  # fit sizes the class weights by it
        fit(member, ds, probe.kind, labels=labels, seed=seed + k, **kwargs)
    return probe.eval()


def fit_finetune(probe: Any, encoder: nn.Module, tokens: Sequence[Any], targets: np.ndarray, **kwargs: Any):
    """Train the encoder and the probe's head together on tokens (``finetune=True``).

    The encoder is modified in place; the probe's recorded encoder identity is updated
    to the fine-tuned weights (save the encoder too, with
    :func:`omnispectra.pretrained.save_weights`).
    """
    from ..probes import encoder_description

    if getattr(probe, "members", 1) > 1:
        # the members would share one encoder and be trained through their average
        raise ValueError("fine-tuning trains one head with the encoder; use a probe with members=1")
    y, labels = _training_targets(probe, targets)
    net = EncoderWithHead(encoder, probe)
    net.n_out = probe.n_out
    for p in encoder.parameters():
        p.requires_grad_(True)
    fit(net, TokenTargetDataset(tokens, y), probe.kind, labels=labels,
        collate_fn=TokenTargetDataset.collate, **kwargs)
    encoder.eval()
    probe.encoder = encoder_description(encoder)
    return probe
