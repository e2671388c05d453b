"""Pretraining with Lightning (imports ``lightning``; the core package does not).

Lightning is not a dependency of the core package: install it with the ``train`` extra,
``pip install "omnispectra[train]"``. :func:`require_lightning` checks for it and raises
:class:`~omnispectra.exceptions.MissingDependencyError` naming the extra.

Names are resolved lazily, so ``import omnispectra.training`` is cheap and a missing
module of this subpackage only fails when its names are used. The training entry point
is ``omnispectra.training.train.train`` (not re-exported: the name would clash with
the ``train`` submodule).
"""

from __future__ import annotations

import importlib
from typing import Any

from ..exceptions import MissingDependencyError

__all__ = [
    "require_lightning",
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


def require_lightning(extra: str = "train") -> None:
    """Raise a clear error when Lightning, which training needs, is not installed.

    Parameters
    ----------
    extra : str
        The extra of omnispectra that installs Lightning for the caller's task
        (``train``; ``eval`` for ``omnispectra evaluate``).

    Raises
    ------
    MissingDependencyError
        ``lightning`` cannot be imported; the message says which extra to install.
    """
    try:
        import lightning  # noqa: F401
    except ImportError as err:
        raise MissingDependencyError(
            f"this needs Lightning, which is not installed ({err}); "
            f'install it with: pip install "omnispectra[{extra}]"'
        ) from err


def __getattr__(name: str) -> Any:
    if name in _LOCATIONS:
        if _LOCATIONS[name] in {".datamodule", ".module"}:
            require_lightning()
        value = getattr(importlib.import_module(_LOCATIONS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
