"""Pretraining runs: a config dataclass with presets, ``train()`` and ``export_checkpoint()``.

``TrainConfig`` holds every setting of a run; :data:`TRAIN_PRESETS` give the paper's run
(``paper``: D=768, 6 layers, 6 heads, batch 128 per device, 4 workers, prefetch 2, seed
42, 2M steps, checkpoint and validation every 800 steps, DDP over all GPUs, bf16 mixed
precision where supported) and CPU-sized runs (``tiny``, ``small``). The resolved config
is written as YAML next to the checkpoints, and a run is reproduced from that file alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..exceptions import CheckpointError
from ..model import OmniSpectraConfig
from ..pretrained import save_weights

__all__ = ["TrainConfig", "TRAIN_PRESETS", "train", "export_checkpoint", "load_checkpoint_model"]


@dataclass
class TrainConfig:
    """Everything a pretraining run needs; every field can be overridden on the CLI."""

    corpus: list[str] = field(default_factory=list)   # corpus HDF5 files
    output: str = "runs/omnispectra"                   # checkpoints, logs, resolved config
    preset: str = "tiny"                               # model preset (see omnispectra.model.PRESETS)
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the model config
    batch_size: int = 16                               # per device
    num_workers: int = 0
    prefetch_factor: int = 2
    seed: int = 42
    max_steps: int = 2000
    max_time_minutes: float | None = None              # stop (and checkpoint) after this wall time
    checkpoint_every: int = 200                        # optimizer steps
    val_every: int = 200                               # optimizer steps
    val_fraction: float = 0.1                          # paper: 0.01 for its 5.5M spectra
    mask_ratio: float = 0.75
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    t0_steps: int = 200_000                            # capped at max_steps for short runs
    eta_min: float = 1e-6
    grad_clip: float = 1.0
    precision: str = "auto"                            # "auto": bf16-mixed on capable GPUs, else 32-true
    compile: bool = False                              # torch.compile the encoder (faster steps on GPUs)
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"                             # "auto" picks DDP for several devices
    num_nodes: int = 1
    bucket_pool: int | None = None                     # spectra per length-sorting pool
    survey_weights: dict[str, float] | None = None     # per-survey sampling weights (1 = natural mix)
    progress: bool = True

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "TrainConfig":
        if name not in TRAIN_PRESETS:
            raise ValueError(f"unknown training preset {name!r}; known: {', '.join(TRAIN_PRESETS)}")
        return dataclasses.replace(TRAIN_PRESETS[name], **overrides)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, base: "TrainConfig | None" = None) -> "TrainConfig":
        """Settings from a YAML mapping of field names, applied over ``base``.

        Without ``base``, the file's ``preset`` key (default ``tiny``) chooses the base.
        """
        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a mapping of TrainConfig fields")
        if base is None:
            base = cls.from_preset(values.get("preset", "tiny"))
        return base.replace(**values)

    def replace(self, **values: Any) -> "TrainConfig":
        """A copy with some fields changed; unknown names are an error."""
        return dataclasses.replace(self, **_checked(values))

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["betas"] = list(self.betas)
        return values

    def model_config(self) -> OmniSpectraConfig:
        return OmniSpectraConfig.from_preset(self.preset, mask_ratio=self.mask_ratio, **self.model)


def _checked(values: dict[str, Any]) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown training settings {sorted(unknown)}; known: {sorted(known)}")
    if "betas" in values:
        values = {**values, "betas": tuple(values["betas"])}
    return values


TRAIN_PRESETS: dict[str, TrainConfig] = {
    "tiny": TrainConfig(preset="tiny", batch_size=16, max_steps=2000, checkpoint_every=200, val_every=200),
    "small": TrainConfig(preset="small", batch_size=16, max_steps=4000, checkpoint_every=200, val_every=200),
    "paper": TrainConfig(preset="paper", batch_size=128, num_workers=4, prefetch_factor=2, seed=42,
                         max_steps=2_000_000, checkpoint_every=800, val_every=800, val_fraction=0.01,
                         devices="auto", strategy="auto"),
}


def _precision(config: TrainConfig) -> str:
    if config.precision != "auto":
        return config.precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def train(config: TrainConfig, resume: bool = False, callbacks: list | None = None) -> dict[str, Any]:
    """Run (or resume) masked-reconstruction pretraining.

    Parameters
    ----------
    config : TrainConfig
        The run's settings; written to ``<output>/config.yaml``.
    resume : bool
        Continue from ``<output>/checkpoints/last.ckpt``: the run continues step for step
        as if it had not been interrupted (same data order, masks and optimizer state).
    callbacks : list of lightning Callback, optional
        Extra callbacks for the Trainer.

    Returns
    -------
    dict
        Paths of the last and best checkpoints, the final validation loss, steps, wall time.
    """
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from .datamodule import SpectraDataModule
    from .module import AtomicCheckpointIO, OmniSpectraModule

    if not config.corpus:
        raise ValueError("no corpus given: build one with `omnispectra corpus build`")
    out = Path(config.output)
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if resume and not last.is_file():
        raise CheckpointError(f"--resume: no checkpoint at {last}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

    L.seed_everything(config.seed, workers=True, verbose=False)
    model_config = config.model_config()
    module = OmniSpectraModule(
        model_config.to_dict(), lr=config.lr, weight_decay=config.weight_decay, betas=config.betas,
        t0_steps=min(config.t0_steps, config.max_steps), eta_min=config.eta_min,
    )
    if config.compile:
        module.model.compile_encoder()
    data = SpectraDataModule(
        config.corpus, batch_size=config.batch_size, num_workers=config.num_workers,
        prefetch_factor=config.prefetch_factor, val_fraction=config.val_fraction, seed=config.seed,
        mask_ratio=config.mask_ratio, patch_size=model_config.patch_size, stride=model_config.stride,
        pool_size=config.bucket_pool, survey_weights=config.survey_weights,
    )
    periodic = ModelCheckpoint(dirpath=ckpt_dir, filename="step{step:08d}", auto_insert_metric_name=False,
                               every_n_train_steps=config.checkpoint_every, save_top_k=-1, save_last=True)
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_loss", mode="min", save_top_k=1,
                           auto_insert_metric_name=False)
    # one log version per (re)start: logs/version_N/metrics.csv keeps every segment of a run
    loggers = [CSVLogger(out, name="logs")]
    try:
        from lightning.pytorch.loggers import TensorBoardLogger
        import tensorboard  # noqa: F401

        loggers.append(TensorBoardLogger(out, name="tensorboard"))
    except ImportError:
        pass
    trainer = L.Trainer(
        max_steps=config.max_steps,
        max_time={"minutes": config.max_time_minutes} if config.max_time_minutes else None,
        # validate at least once, also in runs shorter than val_every
        val_check_interval=min(config.val_every, config.max_steps), check_val_every_n_epoch=None,
        gradient_clip_val=config.grad_clip, precision=_precision(config),
        accelerator=config.accelerator, devices=config.devices, num_nodes=config.num_nodes,
        strategy=config.strategy, plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # the length-bucketing sampler is rank-aware itself
        callbacks=[*(callbacks or []), periodic, best], logger=loggers, log_every_n_steps=1,
        enable_progress_bar=config.progress, enable_model_summary=config.progress,
        deterministic=False,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume else None)
    wall = time.perf_counter() - start
    val_loss = trainer.callback_metrics.get("val_loss")
    result = {
        "last_checkpoint": str(last),
        "best_checkpoint": best.best_model_path or None,
        "val_loss": None if val_loss is None else float(val_loss),
        "steps": int(trainer.global_step),
        "wall_time_s": wall,
        "metrics_csv": str(Path(loggers[0].log_dir) / "metrics.csv"),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result


def load_checkpoint_model(path: str | os.PathLike):
    """The :class:`~omnispectra.model.OmniSpectra` inside a Lightning checkpoint.

    Reads with ``torch.load(weights_only=True)``: no code in the file can run.

    Raises
    ------
    CheckpointError
        Missing, corrupt or foreign checkpoint, or tensors that do not match its config.
    """
    from ..model import OmniSpectra

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip errors of all kinds for corrupt files
        raise CheckpointError(f"{path} is not a readable checkpoint: {err}") from err
    try:
        config = OmniSpectraConfig.from_dict(dict(ckpt["hyper_parameters"]["model_config"]))
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path} is not an omnispectra training checkpoint: {err}") from err
    model = OmniSpectra(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not match its model configuration: {err}") from err
    model.info = {"checkpoint": path.name, "global_step": int(ckpt.get("global_step", -1))}
    return model.eval()


def export_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike,
                      info: dict[str, Any] | None = None) -> str:
    """Write the encoder of a training checkpoint as a safetensors weights file.

    Returns the file's sha256 (ready for the pooch registry). No optimizer state is kept.
    """
    model = load_checkpoint_model(checkpoint)
    return save_weights(model, output, info={**model.info, **(info or {})})
