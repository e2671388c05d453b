"""Candidate probe recipes: one validated record per candidate, read from YAML.

The recipes of the shipped predictors live in ``configs/predictor_recipes.yaml`` of the
repository (a mapping ``task -> list of candidates``); a user's own candidates for
:func:`omnispectra.training.predictors.train_probe` use the same schema. Every entry is
checked when it is read: an unknown key, a missing one or a value of the wrong type or
range is a :class:`~omnispectra.exceptions.ConfigError` naming the file, the task, the
entry and the key.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...exceptions import ConfigError

__all__ = ["Recipe", "HEADS", "LOSSES", "recipe_from_mapping", "read_recipes", "load_recipes",
           "candidate_set"]

#: Head architectures of :func:`omnispectra.probes.make_head`.
HEADS = ("linear", "mlp")
#: Regression losses (the keys of
#: :data:`omnispectra.training.probe_module.REGRESSION_LOSSES`, which imports Lightning).
LOSSES = ("mse", "l1")


@dataclass(frozen=True)
class Recipe:
    """How one candidate probe is built and trained.

    Parameters
    ----------
    name : str
        Unique within its task; recorded in ``predictors.json`` and the probe's ``info``.
    head : {"linear", "mlp"}
        See :func:`omnispectra.probes.make_head`.
    steps : int
        Optimizer steps (batch 64).
    lr : float
        AdamW learning rate.
    hidden : tuple of int
        Hidden widths (``mlp`` only, at least one).
    dropout : float
        Dropout after every hidden layer, in ``[0, 1)``.
    members : int
        Heads of an ensemble (1: a single head). Ensembles give regression uncertainties.
    loss : {"mse", "l1"}
        Regression loss on the normalized targets.
    engine : bool
        Engine spectra join the training folds (when the caller provides them).
    """

    name: str
    head: str
    steps: int
    lr: float
    hidden: tuple[int, ...] = field(default=())
    dropout: float = 0.0
    members: int = 1
    loss: str = "mse"
    engine: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The recipe as JSON, keys at their default left out (the form ``predictors.json`` records)."""
        out: dict[str, Any] = {"name": self.name, "head": self.head}
        if self.hidden:
            out["hidden"] = list(self.hidden)
        if self.dropout:
            out["dropout"] = self.dropout
        out.update(steps=self.steps, lr=self.lr)
        if self.members != 1:
            out["members"] = self.members
        if self.loss != "mse":
            out["loss"] = self.loss
        if self.engine:
            out["engine"] = True
        return out


def _number(value: Any, where: str, key: str, integer: bool) -> float:
    # YAML's true/false are ints to Python: refuse them as numbers
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise ConfigError(f"{where}: {key} must be {'an integer' if integer else 'a number'}, got {value!r}")
    return value


def _hidden(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ConfigError(f"{where}: hidden must be a list of layer widths, got {value!r}")
    widths = tuple(int(_number(v, where, "hidden", integer=True)) for v in value)
    if any(w < 1 for w in widths):
        raise ConfigError(f"{where}: hidden widths must be positive, got {list(widths)}")
    return widths


def _checked_fields(entry: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The typed fields of one entry (keys and types checked, ranges not yet)."""
    known = {f for f in Recipe.__dataclass_fields__}
    unknown = sorted(set(map(str, entry)) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    missing = [k for k in ("name", "head", "steps", "lr") if k not in entry]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}")
    name = entry["name"]
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: name must be a non-empty string, got {name!r}")
    for key in ("head", "loss"):
        if key in entry and not isinstance(entry[key], str):
            raise ConfigError(f"{where}: {key} must be a string, got {entry[key]!r}")
    if "engine" in entry and not isinstance(entry["engine"], bool):
        raise ConfigError(f"{where}: engine must be true or false, got {entry['engine']!r}")
    return {"name": name, "head": entry["head"], "loss": entry.get("loss", "mse"),
            "engine": entry.get("engine", False), "hidden": _hidden(entry.get("hidden", ()), where),
            "steps": int(_number(entry["steps"], where, "steps", integer=True)),
            "members": int(_number(entry.get("members", 1), where, "members", integer=True)),
            "lr": float(_number(entry["lr"], where, "lr", integer=False)),
            "dropout": float(_number(entry.get("dropout", 0.0), where, "dropout", integer=False))}


def recipe_from_mapping(entry: Any, where: str = "recipe") -> Recipe:
    """A :class:`Recipe` from one mapping (a YAML entry), every key and value checked.

    Parameters
    ----------
    entry : mapping
        Keys of :class:`Recipe`; ``name``, ``head``, ``steps`` and ``lr`` are required.
    where : str
        Where the entry comes from, for the error message.

    Raises
    ------
    ConfigError
        Not a mapping, an unknown or missing key, or a value of the wrong type or range.
    """
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: a recipe must be a mapping of keys to values, got {entry!r}")
    f = _checked_fields(entry, where)
    if f["head"] not in HEADS:
        raise ConfigError(f"{where}: head must be one of {list(HEADS)}, got {f['head']!r}")
    if f["head"] == "mlp" and not f["hidden"]:
        raise ConfigError(f"{where}: an mlp head needs hidden (a list of at least one width)")
    if f["head"] == "linear" and (f["hidden"] or f["dropout"]):
        raise ConfigError(f"{where}: a linear head takes neither hidden nor dropout")
    if f["loss"] not in LOSSES:
        raise ConfigError(f"{where}: loss must be one of {list(LOSSES)}, got {f['loss']!r}")
    if f["steps"] < 1 or f["members"] < 1:
        raise ConfigError(f"{where}: steps and members must be at least 1, "
                          f"got {f['steps']} and {f['members']}")
    if not f["lr"] > 0:
        raise ConfigError(f"{where}: lr must be positive, got {f['lr']}")
    if not 0 <= f["dropout"] < 1:
        raise ConfigError(f"{where}: dropout must be in [0, 1), got {f['dropout']}")
    return Recipe(**f)


def read_recipes(values: Any, source: str = "recipes") -> dict[str, list[Recipe]]:
    """Validate a parsed recipe document: ``{task: [recipe mapping, ...]}``.

    Parameters
    ----------
    values : mapping
        Task name -> non-empty list of recipe mappings (:func:`recipe_from_mapping`).
    source : str
        Name of the document (a file name) for error messages.

    Returns
    -------
    dict
        Task name -> list of :class:`Recipe`, in the document's order.

    Raises
    ------
    ConfigError
        Not a mapping of lists, an empty list, a bad entry or a name used twice in a task.
    """
    if not isinstance(values, Mapping) or not values:
        raise ConfigError(f"{source}: expected a mapping of task names to lists of recipes")
    out: dict[str, list[Recipe]] = {}
    for task, entries in values.items():
        if not isinstance(entries, list) or not entries:
            raise ConfigError(f"{source}: task {task!r} must list at least one recipe")
        recipes = [recipe_from_mapping(e, f"{source}: {task}[{i}]") for i, e in enumerate(entries)]
        names = [r.name for r in recipes]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"{source}: task {task!r} names recipe(s) {twice} more than once")
        out[str(task)] = recipes
    return out


def load_recipes(path: str | os.PathLike, tasks: Sequence[str] = ()) -> dict[str, list[Recipe]]:
    """Read and validate a recipe YAML file (e.g. ``configs/predictor_recipes.yaml``).

    Parameters
    ----------
    path : path-like
        The YAML file.
    tasks : sequence of str
        Tasks that must be present (e.g. the tasks about to be trained).

    Raises
    ------
    ConfigError
        Missing or unreadable file, invalid YAML, a bad entry (:func:`read_recipes`) or a
        missing task.
    """
    import yaml

    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read the recipe file {path}: {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    recipes = read_recipes(values, str(path))
    missing = [t for t in tasks if t not in recipes]
    if missing:
        raise ConfigError(f"{path} has no recipes for task(s) {missing}; it has {sorted(recipes)}")
    return recipes


def candidate_set(path: str | os.PathLike, name: str | None = None) -> list[Recipe]:
    """The candidates of one task (``name``) of a recipe file; without ``name`` the file must
    hold exactly one list.

    Raises
    ------
    ConfigError
        As :func:`load_recipes`, or ``name`` missing / not given for a file of several lists.
    """
    recipes = load_recipes(path, [name] if name else [])
    if name is None and len(recipes) != 1:
        raise ConfigError(f"{path} holds the recipe lists {sorted(recipes)}; say which one to use")
    return recipes[name] if name else next(iter(recipes.values()))
