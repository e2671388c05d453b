"""Pretraining with Lightning (imports ``lightning``; the core package does not).

Names are resolved lazily, so ``import omnispectra.training`` is cheap and a missing
module of this subpackage only fails when its names are used. The training entry point
is ``omnispectra.training.train.train`` (not re-exported: the name would clash with
the ``train`` submodule).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "SpectraDataModule",
    "OmniSpectraModule",
    "AtomicCheckpointIO",
    "TrainConfig",
    "TRAIN_PRESETS",
    "export_checkpoint",
    "load_checkpoint_model",
    "check_run_folder",
    "embed_corpus",
    "read_embedding_shards",
]

_LOCATIONS = {
    "SpectraDataModule": ".datamodule",
    "OmniSpectraModule": ".module",
    "AtomicCheckpointIO": ".module",
    "TrainConfig": ".train",
    "TRAIN_PRESETS": ".train",
    "export_checkpoint": ".train",
    "load_checkpoint_model": ".train",
    "check_run_folder": ".train",
    "embed_corpus": ".predict",
    "read_embedding_shards": ".predict",
}


def __getattr__(name: str) -> Any:
    if name in _LOCATIONS:
        value = getattr(importlib.import_module(_LOCATIONS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
