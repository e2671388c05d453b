"""Downstream evaluation: tasks, protocols, metrics and baselines (needs scikit-learn).

``omnispectra.evaluation.harness.evaluate`` runs the paper's downstream protocol on a
corpus; ``omnispectra evaluate`` is its command line. Install the ``eval`` extra
(scikit-learn, matplotlib) to use it.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["evaluate", "TASKS", "Task", "classification_metrics", "regression_metrics", "source_classes"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        value = getattr(importlib.import_module(".harness", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
