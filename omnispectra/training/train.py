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
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..exceptions import CheckpointError, ConfigError, CorpusError, OutputExistsError
from ..fileio import check_output, write_text
from ..masking import MASKING_SCHEMES
from ..model import OmniSpectraConfig
from ..pretrained import check_tensor_shapes, expected_tensor_shapes, save_weights, validate_config
from ..splits import DEFAULT_VALIDATION_FRACTION

__all__ = ["TrainConfig", "TRAIN_PRESETS", "RUN_FILES", "train", "check_run_folder", "export_checkpoint",
           "load_checkpoint_model"]

logger = logging.getLogger(__name__)

#: What a run writes into its output folder; a folder holding any of them is a used run folder.
RUN_FILES = ("config.yaml", "result.json", "checkpoints", "logs", "tensorboard")


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
    # the project's one object-hash split (omnispectra.splits), which also keeps validation
    # spectra out of the engine's donors; the paper preset holds out 0.01 of its 5.5M spectra
    val_fraction: float = DEFAULT_VALIDATION_FRACTION
    split_seed: int | None = None                      # object-hash split seed (None: seed; project: 0)
    mask_ratio: float = 0.75
    masking: str = "chunk"                             # training masks: "chunk" (paper), "random" (ablation)
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
    engine_fraction: float | None = None               # share of draws from engine_* surveys (None: natural)
    init_weights: str | None = None                    # start from this weights file (same architecture)
    # label heads + invariance term on engine spectra (omnispectra.training.auxiliary.AuxiliaryConfig
    # fields, e.g. {"class_weight": 0.1, "invariance_weight": 0.1}); None: the paper's objective alone
    auxiliary: dict[str, float] | None = None
    # engine spectra rendered during training instead of (or beside) engine corpora
    # (omnispectra.training.stream.EngineStreamConfig: donors, templates, objects, pairs, seed, stars,
    # star_fraction)
    engine_stream: dict[str, Any] | None = None
    progress: bool = True

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """A preset of :data:`TRAIN_PRESETS` with some fields changed.

        Raises
        ------
        ConfigError
            Unknown preset or setting names.
        """
        if name not in TRAIN_PRESETS:
            raise ConfigError(f"unknown training preset {name!r}; known: {', '.join(TRAIN_PRESETS)}")
        return TRAIN_PRESETS[name].replace(**overrides)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, base: TrainConfig | None = None) -> TrainConfig:
        """Settings from a YAML mapping of field names, applied over ``base``.

        Without ``base``, the file's ``preset`` key (default ``tiny``) chooses the base.

        Raises
        ------
        ConfigError
            The file is missing or unreadable, is not YAML, does not hold a mapping, or
            names unknown settings.
        """
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as err:
            raise ConfigError(f"cannot read the training settings {path}: {err.strerror or err}") from err
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            line = f" (line {where.line + 1})" if where is not None else ""
            problem = getattr(err, 'problem', None) or err
            raise ConfigError(f"{path} is not valid YAML{line}: {problem}") from err
        if not isinstance(values, dict):
            raise ConfigError(
                f"{path} must hold a mapping of TrainConfig fields, got {type(values).__name__}")
        if base is None:
            base = cls.from_preset(values.get("preset", "tiny"))
        return base.replace(**values)

    @classmethod
    def resolve(cls, preset: str | None = None, config_file: str | os.PathLike | None = None,
                resume: bool = False, options: dict[str, Any] | None = None) -> TrainConfig:
        """The settings of a run, from every place they can come from, in one order of precedence.

        preset (default ``tiny``) < the ``config_file`` (over ``preset`` when both are
        given), or with ``resume`` and no file the run's saved ``<output>/config.yaml`` <
        ``options`` (explicit settings, e.g. the command line's options and ``--set``;
        ``options["output"]`` names the run folder).

        Raises
        ------
        ConfigError
            Unknown preset or setting names, an unreadable or invalid file.
        """
        options = dict(options or {})
        saved = Path(options["output"]) / "config.yaml" if options.get("output") else None
        if config_file:
            config = cls.from_yaml(config_file, base=cls.from_preset(preset) if preset else None)
        elif resume and saved is not None and saved.is_file():
            config = cls.from_yaml(saved)
        else:
            config = cls.from_preset(preset or "tiny")
        return config.replace(**options)

    def replace(self, **values: Any) -> TrainConfig:
        """A copy with some fields changed; unknown names and wrong types are a :class:`ConfigError`."""
        return dataclasses.replace(self, **_checked(values))

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["betas"] = list(self.betas)
        return values

    def model_config(self) -> OmniSpectraConfig:
        """The encoder's configuration (preset plus ``model`` overrides), validated.

        Raises
        ------
        ConfigError
            Unknown preset, unknown model settings or invalid values.
        """
        from ..model import PRESETS

        if self.preset not in PRESETS:
            raise ConfigError(f"unknown model preset {self.preset!r}; known: {', '.join(PRESETS)}")
        values = {**PRESETS[self.preset].to_dict(), "mask_ratio": self.mask_ratio, **self.model}
        try:
            return validate_config(values, source="the model settings")
        except CheckpointError as err:
            raise ConfigError(str(err)) from err


_POSITIVE_INTS = ("batch_size", "max_steps", "checkpoint_every", "val_every", "t0_steps", "num_nodes")
_NUMBERS = ("val_fraction", "mask_ratio", "lr", "weight_decay", "eta_min", "grad_clip")


def _checked(values: dict[str, Any]) -> dict[str, Any]:
    """Settings with known names and usable types (so a typo fails here, not mid-run)."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown training settings {sorted(unknown)}; known: {sorted(known)}")
    for key, value in values.items():
        if key in _POSITIVE_INTS and not (type(value) is int and value >= 1):
            raise ConfigError(f"training setting {key}={value!r} must be a positive integer")
        if key in _NUMBERS and not (type(value) in (int, float) and value >= 0):
            raise ConfigError(f"training setting {key}={value!r} must be a number >= 0")
        if key in ("num_workers", "seed") and type(value) is not int:
            raise ConfigError(f"training setting {key}={value!r} must be an integer")
        if key == "engine_fraction" and value is not None and not (
                type(value) in (int, float) and 0 <= value < 1):
            raise ConfigError(f"training setting engine_fraction={value!r} must be a number in [0, 1)")
        if key == "split_seed" and value is not None and type(value) is not int:
            raise ConfigError(f"training setting split_seed={value!r} must be an integer or null")
        if key == "masking" and value not in MASKING_SCHEMES:
            raise ConfigError(f"training setting masking={value!r} must be one of {MASKING_SCHEMES}")
        if key == "auxiliary" and value is not None:
            from .auxiliary import AuxiliaryConfig

            if not isinstance(value, dict):
                raise ConfigError(f"training setting auxiliary={value!r} must be a mapping or null")
            AuxiliaryConfig.from_dict(value)
        if key == "engine_stream" and value is not None:
            from .stream import EngineStreamConfig

            EngineStreamConfig.from_dict(value)
        if key == "model" and not isinstance(value, dict):
            raise ConfigError(f"training setting model={value!r} must be a mapping of model settings")
        if key == "corpus":
            if isinstance(value, (str, os.PathLike)):
                value = [value]
            if not (isinstance(value, (list, tuple))
                    and all(isinstance(v, (str, os.PathLike)) for v in value)):
                raise ConfigError(f"training setting corpus={value!r} must be a list of file names")
            values = {**values, "corpus": [os.fspath(v) for v in value]}
    if "betas" in values:
        betas = values["betas"]
        if not (isinstance(betas, (list, tuple)) and len(betas) == 2):
            raise ConfigError(f"training setting betas={betas!r} must be two numbers")
        values = {**values, "betas": tuple(betas)}
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


def check_run_folder(output: str | os.PathLike, resume: bool = False, overwrite: bool = False) -> Path:
    """Check that a run may write into ``output``; call it before any work.

    A folder holding any of :data:`RUN_FILES` is a used run folder: it is refused unless
    ``resume`` (continue that run from ``checkpoints/last.ckpt``) or ``overwrite`` (its run
    files are deleted, so the new run starts clean; other files are left alone).

    Returns
    -------
    Path
        The last-checkpoint path of the run (``<output>/checkpoints/last.ckpt``).

    Raises
    ------
    OutputExistsError
        ``output`` is a file, or a used run folder without ``resume``/``overwrite``.
    CheckpointError
        ``resume`` without a checkpoint to resume from.
    ConfigError
        ``resume`` and ``overwrite`` together.
    """
    out = Path(output)
    last = out / "checkpoints" / "last.ckpt"
    if os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0":
        # a process Lightning launched for another rank re-runs the command after rank 0
        # checked (and, with overwrite, cleaned) the folder and wrote config.yaml into it
        return last
    if resume and overwrite:
        raise ConfigError("resume and overwrite exclude each other: resume continues the run in "
                          f"{out}, overwrite deletes it")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"the run folder {out} is a file")
    if resume:
        if not last.is_file():
            raise CheckpointError(f"cannot resume: no checkpoint at {last} (start a new run without resume)")
        return last
    used = [name for name in RUN_FILES if (out / name).exists()]
    if used and not overwrite:
        raise OutputExistsError(
            f"{out} already holds a training run ({', '.join(used)}); resume it (resume=True), "
            "choose another output folder, or start clean with overwrite=True")
    for name in used:
        target = out / name
        logger.info("overwrite: deleting %s", target)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    return last


def _invariance_on(auxiliary: dict[str, float]) -> bool:
    from .auxiliary import AuxiliaryConfig

    return AuxiliaryConfig.from_dict(auxiliary).invariance_weight > 0


def _data_module(config: TrainConfig, model_config: Any):
    """The data module of a run, set up for fitting (its settings and corpus checked)."""
    from .datamodule import SpectraDataModule

    pairs = config.auxiliary is not None and _invariance_on(config.auxiliary)
    stream = None
    if config.engine_stream is not None:
        from .stream import stream_from_config

        split_seed = config.seed if config.split_seed is None else config.split_seed
        stream = stream_from_config(config.engine_stream, seed=config.seed, pairs=pairs,
                                    fraction=config.val_fraction, split_seed=split_seed)
    data = SpectraDataModule(
        config.corpus, batch_size=config.batch_size, num_workers=config.num_workers,
        prefetch_factor=config.prefetch_factor, val_fraction=config.val_fraction, seed=config.seed,
        mask_ratio=config.mask_ratio, patch_size=model_config.patch_size, stride=model_config.stride,
        pool_size=config.bucket_pool, survey_weights=config.survey_weights,
        engine_fraction=config.engine_fraction,
        masking=config.masking, split_seed=config.split_seed,
        auxiliary=config.auxiliary is not None, pairs=pairs, engine_stream=stream,
    )
    try:
        data.setup("fit")
    except ValueError as err:  # e.g. survey weights naming surveys the corpus lacks
        raise ConfigError(str(err)) from err
    if len(data.train_dataset) == 0:
        raise CorpusError(
            f"the corpus holds no spectra to train on ({len(data.dataset)} usable spectra, "
            f"{data.dataset.n_dropped} with fewer than {model_config.patch_size} valid pixels, "
            f"{len(data.val_dataset)} held out for validation)")
    return data


def _loggers(out: Path) -> list:
    """CSV (and TensorBoard when installed) loggers; one version per (re)start, so
    logs/version_N/metrics.csv keeps every segment of a run."""
    from lightning.pytorch.loggers import CSVLogger

    loggers = [CSVLogger(out, name="logs")]
    try:
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(out, name="tensorboard"))
    except ImportError:
        pass
    return loggers


def train(config: TrainConfig, resume: bool = False, callbacks: list | None = None,
          overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) masked-reconstruction pretraining.

    Everything that can be checked is checked before the first step: the settings, the
    run folder (:func:`check_run_folder`) and the corpus (it must hold usable spectra).
    After its first few steps the run logs how long it will take and how to shorten it
    (:class:`~omnispectra.training.module.TimeEstimate`; a warning past
    :data:`~omnispectra.training.module.LONG_RUN_MINUTES`).

    Parameters
    ----------
    config : TrainConfig
        The run's settings; written to ``<output>/config.yaml``.
    resume : bool
        Continue from ``<output>/checkpoints/last.ckpt``: the run continues step for step
        as if it had not been interrupted (same data order, masks and optimizer state).
    callbacks : list of lightning Callback, optional
        Extra callbacks for the Trainer.
    overwrite : bool
        Start clean in a used run folder (its checkpoints, logs and config are deleted).

    Returns
    -------
    dict
        Paths of the last and best checkpoints, the final validation loss, steps, wall time.

    Raises
    ------
    ConfigError
        Invalid settings (no corpus, unknown model preset, bad values).
    OutputExistsError, CheckpointError
        See :func:`check_run_folder`.
    CorpusError
        Unreadable corpus files, or no spectra the tokenizer can use.
    """
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from .module import AtomicCheckpointIO, OmniSpectraModule, TimeEstimate

    if not config.corpus:
        raise ConfigError("no corpus given: build one with `omnispectra corpus build`")
    config = config.replace(**config.to_dict())  # also checks fields set directly on the dataclass
    model_config = config.model_config()
    out = Path(config.output)
    ckpt_dir = out / "checkpoints"
    last = check_run_folder(out, resume=resume, overwrite=overwrite)
    data = _data_module(config, model_config)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))

    L.seed_everything(config.seed, workers=True, verbose=False)
    module = OmniSpectraModule(
        model_config.to_dict(), lr=config.lr, weight_decay=config.weight_decay, betas=config.betas,
        t0_steps=min(config.t0_steps, config.max_steps), eta_min=config.eta_min,
        **({"auxiliary": dict(config.auxiliary)} if config.auxiliary is not None else {}),
    )
    if config.init_weights and not resume:
        initialize_from(module.model, config.init_weights)
    if config.compile:
        module.model.compile_encoder()
    periodic = ModelCheckpoint(dirpath=ckpt_dir, filename="step{step:08d}", auto_insert_metric_name=False,
                               every_n_train_steps=config.checkpoint_every, save_top_k=-1, save_last=True)
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_loss", mode="min", save_top_k=1,
                           auto_insert_metric_name=False)
    loggers = _loggers(out)
    trainer = L.Trainer(
        max_steps=config.max_steps,
        max_time={"minutes": config.max_time_minutes} if config.max_time_minutes else None,
        # validate at least once, also in runs shorter than val_every
        val_check_interval=min(config.val_every, config.max_steps), check_val_every_n_epoch=None,
        gradient_clip_val=config.grad_clip, precision=_precision(config),
        accelerator=config.accelerator, devices=config.devices, num_nodes=config.num_nodes,
        strategy=config.strategy, plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # the length-bucketing sampler is rank-aware itself
        callbacks=[*(callbacks or []), periodic, best,
                   TimeEstimate(config.max_steps, config.max_time_minutes)],
        logger=loggers, log_every_n_steps=1,
        enable_progress_bar=config.progress, enable_model_summary=config.progress,
        deterministic=False,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume else None)
    wall = time.perf_counter() - start
    val_loss = trainer.callback_metrics.get("val_loss")
    written = periodic.last_model_path
    if not written or not Path(written).is_file():
        raise CheckpointError(f"the run in {out} ended after {trainer.global_step} steps without "
                              "writing a checkpoint")
    result = {
        "last_checkpoint": str(written),
        "best_checkpoint": best.best_model_path or None,
        "val_loss": None if val_loss is None else float(val_loss),
        "steps": int(trainer.global_step),
        "wall_time_s": wall,
        "metrics_csv": str(Path(loggers[0].log_dir) / "metrics.csv"),
    }
    if data.engine_stream is not None:
        # rendered in this process (num_workers=0); with workers, their share is not counted
        result["engine_stream"] = {**data.train_dataset.describe(),
                                   "share_of_wall_time": round(data.engine_stream.seconds / wall, 4)}
        logger.info("engine stream: %d spectra rendered in %.0f s (%.1f%% of the run's wall time)",
                    data.engine_stream.rendered, data.engine_stream.seconds,
                    100 * data.engine_stream.seconds / wall)
    write_text(out / "result.json", json.dumps(result, indent=2))
    return result


def initialize_from(model: Any, weights: str | os.PathLike) -> None:
    """Copy the tensors of a weights file into ``model`` (continued pretraining).

    Raises
    ------
    ConfigError
        The file's architecture differs from the run's (runtime-only settings such as
        the attention backend may differ).
    CheckpointError
        See :func:`omnispectra.pretrained.load_weights`.
    """
    from ..pretrained import load_weights

    source = load_weights(weights)
    ignore = {"attention", "dropout"}
    theirs = {k: v for k, v in source.config.to_dict().items() if k not in ignore}
    ours = {k: v for k, v in model.config.to_dict().items() if k not in ignore}
    if theirs != ours:
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise ConfigError(f"init_weights {weights} has another architecture than the run (differs in {diff})")
    model.load_state_dict(source.state_dict())
    logger.info("initialized from %s (sha256 %s)", weights, source.info.get("sha256", "?")[:12])


def load_checkpoint_model(path: str | os.PathLike):
    """The :class:`~omnispectra.model.OmniSpectra` inside a Lightning checkpoint.

    Reads with ``torch.load(weights_only=True)``: no code in the file can run.

    Raises
    ------
    CheckpointError
        Missing, corrupt or foreign checkpoint, or tensors that do not match its config.
    """
    import pickle
    import struct
    import zipfile

    from ..model import OmniSpectra

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's own message suggests weights_only=False, i.e. running the file's code: never
        raise CheckpointError(
            f"{path} is not a readable checkpoint: it holds Python objects other than tensors "
            "and plain values, which omnispectra does not unpickle") from err
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile, struct.error) as err:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or not a PyTorch "
                              f"checkpoint: {type(err).__name__})") from err
    try:
        values = dict(ckpt["hyper_parameters"]["model_config"])
        # the encoder only: training-side heads (omnispectra.training.auxiliary) stay behind
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{path} is not an omnispectra training checkpoint "
                              f"(no {err} entry)") from err
    config = validate_config(values, source=f"{path}'s model configuration")
    if not all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in state.values()):
        raise CheckpointError(f"{path}: the model state holds entries that are not float tensors")
    check_tensor_shapes({k: tuple(t.shape) for k, t in state.items()}, expected_tensor_shapes(config),
                        str(path))
    model = OmniSpectra(config)
    model.load_state_dict(state, strict=True)
    model.info = {"checkpoint": path.name, "global_step": int(ckpt.get("global_step", -1))}
    return model.eval()


def export_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike,
                      info: dict[str, Any] | None = None, overwrite: bool = False) -> str:
    """Write the encoder of a training checkpoint as a safetensors weights file.

    Returns the file's sha256 (ready for the pooch registry). No optimizer state is kept.

    Raises
    ------
    OutputIsInputError, OutputExistsError
        ``output`` is the checkpoint, or exists and ``overwrite`` is False (checked first).
    CheckpointError
        See :func:`load_checkpoint_model`.
    """
    check_output(output, [checkpoint], overwrite=overwrite)
    model = load_checkpoint_model(checkpoint)
    return save_weights(model, output, info={**model.info, **(info or {})})
