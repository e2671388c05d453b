"""Train and calibrate a probe on your own labels, with the grouped validation of the shipped ones.

:func:`train_probe` takes embeddings, labels and a group per row (e.g. an object id: all
spectra of one object stay in one fold), cross-validates every candidate recipe over
grouped folds, keeps the best, calibrates it (a softmax temperature for classes, a
``sigma_scale`` for an ensemble's spread) on folds its round did not train on, and refits
it on all rows. The returned :class:`~omnispectra.probes.Probe` carries its calibration and
its cross-validated scores (``info["cross_validation"]``); save it with
:func:`omnispectra.probes.save_probe`. :func:`train_probe_from_files` (``omnispectra
train-probe``) does the same from an embeddings table or spectra files and a label table.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...exceptions import CheckpointError, ConfigError
from .crossval import (
    calibrate_classes,
    calibrate_spread,
    calibration_report,
    choose_recipe,
    cv_rounds,
    fitted_targets,
    grouped_folds,
    pooled,
    recall_report,
    run_cv,
    side_means,
    train_recipe,
)
from .recipes import Recipe

__all__ = ["probe_task", "ProbeCV", "cross_validate_probe", "train_probe", "read_labels", "source_embeddings",
           "train_probe_from_files"]

logger = logging.getLogger(__name__)


def probe_task(name: str, kind: str, names: Sequence[str], transforms: dict[str, str] | None = None,
               units: dict[str, str] | None = None) -> Any:
    """A :class:`omnispectra.evaluation.harness.Task` for a user's probe.

    Parameters
    ----------
    name : str
        Recorded in the probe's ``info``.
    kind : {"classification", "regression"}
    names : sequence of str
        Class names (output ``k`` is ``names[k]``) or target names.
    transforms, units : dict, optional
        Target name -> transform key (:data:`omnispectra.probes.TRANSFORMS`) / unit string.
    """
    from ...evaluation.harness import Task

    if kind not in ("classification", "regression"):
        raise ConfigError(f"kind must be 'classification' or 'regression', got {kind!r}")
    if kind == "classification":
        return Task(name, kind, ["class"], [], classes=list(names), units=dict(units or {}))
    return Task(name, kind, list(names), [], transforms=dict(transforms or {}), units=dict(units or {}))


@dataclass
class ProbeCV:
    """The outcome of :func:`cross_validate_probe`: chosen recipe, calibration, scores."""

    recipe: Recipe
    calibration: dict[str, Any]
    report: dict[str, Any]


def _class_report(task: Any, outs: dict, y: np.ndarray, rounds: list, k: int) -> tuple[dict, dict]:
    fit = calibrate_classes(outs, y, rounds)
    yy = y[pooled(rounds, "evaluation")]
    report = {"temperature_per_round": fit["temperature_per_round"],
              **recall_report(yy, fit["prob"].argmax(1), task.classes),
              "calibration": {"uncalibrated": calibration_report(fit["prob_raw"], yy),
                              "temperature_scaled": calibration_report(fit["prob"], yy)}}
    calibration = {"temperature": fit["temperature"], "n": fit["n"],
                   "fold": f"fitted on the pooled calibration-fold logits of the {k} grouped "
                           "cross-validation probes"}
    return report, calibration


def _regression_report(task: Any, outs: dict, yt: np.ndarray, rounds: list, k: int) -> tuple[dict, dict]:
    from ...evaluation.baselines import trivial_predict
    from ...evaluation.harness import regression_metrics
    from ...probes import fit_normalization

    mean, std = fit_normalization(yt)
    ev_rows = pooled(rounds, "evaluation")
    mean_pred = np.concatenate([trivial_predict(yt[idx["train"]], idx["evaluation"].size, task.kind)
                                for idx in rounds])
    report: dict[str, Any] = {"scores": {
        name: regression_metrics(yt[ev_rows], pred, task.targets, mean, std, task.transforms)
        for name, pred in (("probe", side_means(outs, "evaluation")), ("training_mean", mean_pred))}}
    if outs[0]["evaluation"].shape[0] < 2:
        return report, {}
    fit = calibrate_spread(outs, yt, rounds)
    report["coverage_1sigma"] = dict(zip(task.targets, map(float, fit["coverage"]), strict=True))
    calibration = {"sigma_scale": [float(v) for v in fit["sigma_scale"]],
                   "coverage_1sigma": [float(v) for v in fit["coverage"]], "n": fit["n"],
                   "fold": f"fitted on the pooled calibration-fold predictions of the {k} grouped "
                           "cross-validation ensembles"}
    return report, calibration


def cross_validate_probe(embeddings: np.ndarray, targets: np.ndarray, groups: Sequence[Any], task: Any,
                         candidates: Sequence[Recipe], folds: int = 5, seed: int = 0,
                         steps_scale: float = 1.0) -> ProbeCV:
    """Choose and calibrate a recipe by grouped cross-validation (see the module docstring).

    Parameters
    ----------
    embeddings : array (N, D)
    targets : array
        Class indices ``(N,)`` (classification) or physical values ``(N, T)`` (regression, NaN
        = missing).
    groups : sequence (N,)
        Group of every row (rows of one group share a fold: :func:`omnispectra.splits.fold_of`).
    task : Task
        :func:`probe_task`.
    candidates : sequence of Recipe
        Tried in every round; ties go to the earlier one.
    folds, seed : int
        K of the grouped K-fold (at least 3), seed of the fold hash and the training.
    steps_scale : float
        Factor on every recipe's steps.

    Raises
    ------
    ConfigError
        No candidate, fewer than 3 folds, a fold left empty, or rows/targets/groups that differ in length.
    """
    x = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(targets)
    if not candidates:
        raise ConfigError("no candidate recipe given")
    if x.ndim != 2 or len(y) != len(x) or len(groups) != len(x):
        raise ConfigError(f"embeddings {x.shape}, targets {y.shape} and {len(groups)} groups do not match")
    fold = grouped_folds(groups, folds, seed)
    rounds = cv_rounds(fold, folds)
    outs = run_cv(task, x, y, rounds, candidates, seed, steps_scale)
    yt = fitted_targets(task, y)
    best, choice = choose_recipe(task, outs, yt, rounds)
    make = _class_report if task.kind == "classification" else _regression_report
    report, calibration = make(task, outs[best], yt, rounds, folds)
    report = {"k": int(folds), "seed": int(seed), "n_groups": len(set(map(str, groups))),
              "fold_sizes": np.bincount(fold, minlength=folds).tolist(),
              "selection": {"scores": choice, "chosen": best, "metric": (
                  "macro recall" if task.kind == "classification" else "normalized MSE")
                  + " on the pooled calibration folds"}, **report}
    return ProbeCV(next(r for r in candidates if r.name == best), calibration, report)


def train_probe(embeddings: np.ndarray, targets: np.ndarray, groups: Sequence[Any], task: Any,
                candidates: Sequence[Recipe], folds: int = 5, seed: int = 0,
                encoder: dict[str, Any] | None = None, steps_scale: float = 1.0) -> Any:
    """A calibrated probe chosen by grouped cross-validation and refit on all rows.

    Parameters are those of :func:`cross_validate_probe`, plus ``encoder``: the
    :func:`omnispectra.probes.encoder_description` of the encoder that made the embeddings
    (recorded in the probe, so that it only runs on that encoder).

    Returns
    -------
    Probe
        With ``calibration`` (``temperature``, or ``sigma_scale`` for an ensemble) and
        ``info`` (``recipe``, ``n_train``, ``cross_validation``: the pooled out-of-fold scores).
    """
    cv = cross_validate_probe(embeddings, targets, groups, task, candidates, folds, seed, steps_scale)
    probe = train_recipe(task, np.asarray(embeddings, dtype=np.float32), np.asarray(targets), cv.recipe,
                         seed=seed, encoder_desc=encoder, steps_scale=steps_scale)
    probe.calibration = cv.calibration
    probe.info = {"name": task.name, "recipe": cv.recipe.to_dict(), "n_train": int(len(targets)),
                  "cross_validation": cv.report,
                  "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    return probe


# ---------------------------------------------------------------------------------------
# files


def _column(table: Any, name: str, path: Any) -> np.ndarray:
    if name not in table.colnames:
        raise ConfigError(f"{path} has no column {name!r}; its columns: {table.colnames}")
    col = table[name]
    if getattr(col, "mask", None) is not None and np.any(col.mask):
        raise ConfigError(f"{path}: column {name!r} has {int(np.sum(col.mask))} empty value(s)")
    return np.asarray(col)


def read_labels(path: str | os.PathLike, id_column: str, label_columns: Sequence[str],
                group_column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, labels (N, L), groups)`` of a label table (any format ``Table.read`` opens).

    Raises
    ------
    ConfigError
        Unreadable table, a missing column, empty cells, or an id given twice.
    """
    from astropy.table import Table

    try:
        table = Table.read(path)
    except Exception as err:  # astropy raises many kinds for an unreadable table
        raise ConfigError(f"cannot read the label table {path}: {err}") from err
    if not label_columns:
        raise ConfigError("give at least one label column")
    ids = _column(table, id_column, path).astype(str)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ConfigError(f"{path}: id(s) {uniq[counts > 1][:5].tolist()} appear more than once")
    labels = np.stack([_column(table, c, path) for c in label_columns], axis=1)
    return ids, labels, _column(table, group_column, path).astype(str)


def source_embeddings(model: Any, embeddings: str | os.PathLike | None = None,
                      spectra: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, (N, D) embeddings)`` from an ``omnispectra embed`` table or from spectra files.

    Raises
    ------
    ConfigError
        Both or neither source, or a table without ``id``/``embedding`` columns.
    CheckpointError
        The table's embeddings were made by another encoder than ``model`` (``meta['ENCSHA']``).
    """
    from ...probes import encoder_fingerprint

    if (embeddings is None) == (not spectra):
        raise ConfigError("give either an embeddings table or spectra files, not both or neither")
    if embeddings is None:
        from ...api import embed

        vectors, ids = embed(list(spectra), model=model, return_ids=True, progress=False)
        return np.asarray(ids, dtype=str), np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1)
    from astropy.table import Table

    table = Table.read(embeddings)
    if not {"id", "embedding"} <= set(table.colnames):
        raise ConfigError(f"{embeddings} is not an embeddings table (omnispectra embed): "
                          "no id/embedding columns")
    made_by, have = table.meta.get("ENCSHA"), encoder_fingerprint(model)
    if made_by != have:
        raise CheckpointError(f"the embeddings of {embeddings} were made by encoder "
                              f"{str(made_by)[:12]}..., not by the given model ({have[:12]}...)")
    return np.asarray(table["id"], dtype=str), np.asarray(table["embedding"], dtype=np.float32)


def _targets(labels: np.ndarray, kind: str | None, columns: Sequence[str]) -> tuple[str, np.ndarray, list]:
    """``(kind, targets, names)``: class indices and class names, or floats and column names."""
    if kind is None:
        kind = "classification" if labels.shape[1] == 1 and labels.dtype.kind not in "fc" else "regression"
    if kind == "classification":
        if labels.shape[1] != 1:
            raise ConfigError(f"a classification probe takes one label column, got {list(columns)}")
        names, y = np.unique(labels[:, 0].astype(str), return_inverse=True)
        if names.size < 2:
            raise ConfigError(f"a classification probe needs at least two classes, got {names.tolist()}")
        return kind, y.astype(np.int64), names.tolist()
    try:
        return kind, labels.astype(np.float64), list(columns)
    except ValueError as err:
        raise ConfigError(f"regression label columns {list(columns)} must be numbers: {err}") from err


def _joined(ids: np.ndarray, emb: np.ndarray, label_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in the label table and in the embeddings of the ids both have."""
    where = {v: i for i, v in enumerate(ids)}
    rows = np.array([i for i, v in enumerate(label_ids) if v in where], dtype=np.int64)
    if rows.size < len(label_ids):
        logger.warning("%d of %d labelled ids have no embedding; left out", len(label_ids) - rows.size,
                       len(label_ids))
    if rows.size == 0:
        raise ConfigError("no labelled id matches an embedded spectrum (e.g. labels "
                          f"{label_ids[:3].tolist()}, embeddings {ids[:3].tolist()})")
    return rows, np.array([where[v] for v in label_ids[rows]], dtype=np.int64)


def train_probe_from_files(labels: str | os.PathLike, output: str | os.PathLike,
                           candidates: Sequence[Recipe], label_columns: Sequence[str], id_column: str = "id",
                           group_column: str = "object_id",
                           embeddings: str | os.PathLike | None = None, spectra: Sequence[str] = (),
                           model: Any = "default", kind: str | None = None, folds: int = 5, seed: int = 0,
                           overwrite: bool = False) -> Any:
    """:func:`train_probe` on a label table and an embeddings table or spectra; writes the probe.

    Rows are joined on ids (the table's ``id_column`` and the embeddings' ``id``; labelled ids
    without an embedding are logged and left out). The kind is classification for one
    non-numeric label column, regression otherwise, unless ``kind`` says. The probe is
    written with :func:`omnispectra.probes.save_probe` (``.safetensors`` + ``.json`` card).

    Returns
    -------
    Probe
        The probe written to ``output``.
    """
    from ...fileio import check_output
    from ...probes import encoder_description, save_probe
    from ...runtime import resolve_model

    if Path(output).suffix != ".safetensors":
        raise ConfigError(f"the probe file must end with .safetensors (its card is written beside it as "
                          f".json), got {output}")
    out = check_output(output, [labels, *([embeddings] if embeddings else []), *spectra], overwrite)
    encoder = resolve_model(model, "cpu" if isinstance(model, (str, os.PathLike)) else None)
    label_ids, values, groups = read_labels(labels, id_column, label_columns, group_column)
    ids, emb = source_embeddings(encoder, embeddings, spectra)
    rows, positions = _joined(ids, emb, label_ids)
    kind, y, names = _targets(values[rows], kind, label_columns)
    task = probe_task(Path(output).stem, kind, names)
    probe = train_probe(emb[positions], y, groups[rows], task, candidates, folds, seed,
                        encoder=encoder_description(encoder))
    probe.info["labels"] = {"table": Path(labels).name, "id": id_column, "labels": list(label_columns),
                            "group": group_column}
    save_probe(probe, out)
    logger.info("wrote %s (%s, recipe %r)", out, kind, probe.info["recipe"]["name"])
    return probe
