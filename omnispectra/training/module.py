"""LightningModule for masked-reconstruction pretraining (paper, section *Training*).

The :class:`~omnispectra.model.OmniSpectra` nn.Module knows nothing of Lightning; this
module wraps it with the paper's optimisation: AdamW (lr 1e-4, weight decay 0.01 on
matrices only, betas 0.9/0.95), CosineAnnealingWarmRestarts (T_0 = 200k steps, eta_min
1e-6) stepped every optimizer step, gradient clipping at 1.0 (set on the Trainer).
The loss is the masked Huber loss (``huber_delta``, default
:data:`~omnispectra.model.HUBER_DELTA` = 1 visible-pixel sigma) on batches the collator has
re-standardized over each spectrum's visible pixels (:mod:`omnispectra.collate`);
validation also logs the plain masked MSE (``val_mse``).
Hyper-parameters are saved as plain Python values, so checkpoints load with
``torch.load(..., weights_only=True)``. :class:`TimeEstimate` tells, after the first
steps, how long the run will take and how to shorten it.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..collate import Batch
from ..fileio import commit
from ..model import HUBER_DELTA, OmniSpectra, OmniSpectraConfig, masked_reconstruction_loss

__all__ = ["OmniSpectraModule", "AtomicCheckpointIO", "TimeEstimate", "time_estimate_message",
           "LONG_RUN_MINUTES"]

logger = logging.getLogger(__name__)

#: A run estimated to take longer than this (minutes) is announced as a warning, which the
#: command line shows by default; shorter ones at info level (``-v``).
LONG_RUN_MINUTES = 10.0


class OmniSpectraModule(L.LightningModule):
    """Pretraining wrapper around :class:`~omnispectra.model.OmniSpectra`.

    Parameters
    ----------
    model_config : dict
        :meth:`OmniSpectraConfig.to_dict` of the encoder to train.
    lr, weight_decay, betas : float, float, tuple
        AdamW settings (paper: 1e-4, 0.01, (0.9, 0.95)).
    t0_steps : int
        Period of the first cosine cycle in optimizer steps (paper: 200,000; use at most
        the run's ``max_steps`` for short runs).
    eta_min : float
        Floor of the learning rate.
    huber_delta : float or None
        Huber threshold of the reconstruction loss (None: the paper's plain MSE).
    auxiliary : dict, optional
        Settings of :class:`~omnispectra.training.auxiliary.AuxiliaryConfig`: label heads
        and the invariance term on engine spectra, added to the training loss. None (the
        default) creates no head and leaves every step exactly the paper's objective.
    """

    def __init__(
        self,
        model_config: dict[str, Any],
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.95),
        t0_steps: int = 200_000,
        eta_min: float = 1e-6,
        huber_delta: float | None = HUBER_DELTA,
        auxiliary: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = OmniSpectra(OmniSpectraConfig.from_dict(dict(model_config)))
        self._step_start: float | None = None
        self.aux_config = self.aux_heads = None
        if auxiliary is not None:  # created after the encoder, so its initialization is unchanged
            from .auxiliary import AuxiliaryConfig, AuxiliaryHeads

            self.aux_config = AuxiliaryConfig.from_dict(auxiliary)
            self.aux_heads = AuxiliaryHeads(self.model.config.dim)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.model.reconstruct(batch.tokens, batch.wavelength, batch.valid)

    def auxiliary_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Reconstruction and auxiliary terms of a training batch from one encoder pass:
        ``loss`` (their sum), ``recon_loss`` and the ``aux_*`` terms of
        :func:`~omnispectra.training.auxiliary.auxiliary_losses`."""
        from .auxiliary import auxiliary_losses

        hidden = self.model.encode(batch.tokens, batch.wavelength, batch.valid)
        recon = masked_reconstruction_loss(self.model.head(hidden), batch.target, batch.loss_mask,
                                           batch.pixel_valid, huber_delta=self.hparams.huber_delta)
        terms = auxiliary_losses(self.aux_heads, self.model.pool(hidden, batch.valid), batch.labels,
                                 self.aux_config)
        return {"loss": recon + terms["aux_loss"], "recon_loss": recon, **terms}

    def _common_step(self, batch: Batch, stage: str) -> torch.Tensor:
        if self.aux_heads is not None and stage == "train":
            terms = self.auxiliary_step(batch)
            for name, value in terms.items():
                self.log(f"train_{name}" if name != "loss" else "train_loss", value, batch_size=len(batch),
                         prog_bar=name == "loss", on_step=True, on_epoch=False)
            return terms["loss"]
        pred = self(batch)
        loss = masked_reconstruction_loss(pred, batch.target, batch.loss_mask, batch.pixel_valid,
                                          huber_delta=self.hparams.huber_delta)
        on_step = stage == "train"
        self.log(f"{stage}_loss", loss, batch_size=len(batch), prog_bar=True,
                 on_step=on_step, on_epoch=not on_step, sync_dist=not on_step)
        if not on_step:
            mse = masked_reconstruction_loss(pred.detach(), batch.target, batch.loss_mask, batch.pixel_valid)
            self.log(f"{stage}_mse", mse, batch_size=len(batch), on_epoch=True, sync_dist=True)
        return loss

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        self._step_start = time.perf_counter()

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self._common_step(batch, "train")
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, batch_size=len(batch))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        if self._step_start is None:
            return
        elapsed = max(time.perf_counter() - self._step_start, 1e-9)
        self.log("tokens_per_s", batch.valid.sum().item() / elapsed, on_step=True, batch_size=len(batch))
        self.log("spectra_per_s", len(batch) / elapsed, on_step=True, batch_size=len(batch))

    def validation_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._common_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._common_step(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        decay = [p for p in self.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.lr, betas=tuple(hp.betas),
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=max(1, int(hp.t0_steps)), eta_min=hp.eta_min)
        # step-wise, not Lightning's per-epoch default
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint IO that never replaces a good checkpoint with a partial one.

    Saves go to a temporary file in the target directory and are renamed into place;
    loads use ``weights_only=True`` (no arbitrary unpickling).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = os.fspath(path)
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".ckpt-", suffix=".tmp", dir=directory)
        os.close(fd)
        try:
            torch.save(checkpoint, tmp)
            commit(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = True) -> dict:
        return torch.load(os.fspath(path), map_location=map_location or "cpu", weights_only=True)


def _duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min"``, ``"3 h 20 min"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60.0
    if minutes < 90:
        return f"{minutes:.0f} min"
    return f"{int(minutes // 60)} h {minutes % 60:02.0f} min"


def time_estimate_message(seconds_per_step: float, n_measured: int, step: int, max_steps: int,
                          max_time_minutes: float | None = None) -> str:
    """What :class:`TimeEstimate` logs: the measured pace, the time to ``max_steps`` and the
    options that shorten the run.

    Parameters
    ----------
    seconds_per_step : float
        Wall time of one optimizer step, measured over ``n_measured`` steps (validation excluded).
    step : int
        Optimizer steps done so far (a resumed run counts from its checkpoint).
    max_steps : int
        Steps the run stops at.
    max_time_minutes : float, optional
        The run's ``--max-time``.
    """
    remaining = max(max_steps - step, 0)
    total = remaining * seconds_per_step
    text = (f"training pace: {seconds_per_step:.3g} s per step (measured over {n_measured} steps); "
            f"the {remaining} steps left to max_steps={max_steps} take about {_duration(total)} "
            "(plus validation)")
    if max_time_minutes is not None and total > 60.0 * max_time_minutes:
        reached = step + int(60.0 * max_time_minutes / seconds_per_step)
        return (f"{text}; --max-time {max_time_minutes:g} stops the run after {max_time_minutes:g} min, "
                f"near step {reached}")
    return (f"{text}. Shorten it with --max-steps N or --max-time MINUTES (Python: TrainConfig "
            "max_steps, max_time_minutes)")


class TimeEstimate(L.Callback):
    """Log how long the run will take, measured on its first optimizer steps.

    The first ``skip`` steps (start-up: allocation, first-touch of the data) are not
    timed; the next ``steps`` are, without validation, and the pace is extrapolated to
    ``max_steps``. Logged once, on global rank 0, as a warning when the run would last
    longer than :data:`LONG_RUN_MINUTES` (and ``max_time_minutes`` does not stop it
    sooner), else at info level.
    """

    def __init__(self, max_steps: int, max_time_minutes: float | None = None, steps: int = 3,
                 skip: int = 1) -> None:
        self.max_steps, self.max_time_minutes = int(max_steps), max_time_minutes
        self.steps, self.skip = int(steps), int(skip)
        self.done = False
        self._start: tuple[float, int] | None = None  # (clock, global step) where timing began
        self._paused: float | None = None
        self._first_step: int | None = None

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.done:
            return
        now, step = time.perf_counter(), int(trainer.global_step)
        if self._first_step is None:
            self._first_step = step - 1
        if self._start is None:
            if step - self._first_step >= self.skip:
                self._start = (now, step)
            return
        measured = step - self._start[1]
        if measured < self.steps and step < self.max_steps:
            return
        self.done = True
        if measured < 1 or step >= self.max_steps or not trainer.is_global_zero:
            return  # too short a run to be worth an estimate
        pace = (now - self._start[0]) / measured
        message = time_estimate_message(pace, measured, step, self.max_steps, self.max_time_minutes)
        minutes = (self.max_steps - step) * pace / 60.0
        if self.max_time_minutes is not None:
            minutes = min(minutes, self.max_time_minutes)
        logger.log(logging.WARNING if minutes > LONG_RUN_MINUTES else logging.INFO, message)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._paused = time.perf_counter()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self._paused is not None and self._start is not None:  # validation is not a step
            self._start = (self._start[0] + time.perf_counter() - self._paused, self._start[1])
        self._paused = None
