"""Source groups: leave whole sources out when validating the predictors.

Cross-validation grouped by object over-promises on spectra from other sources (the
shipped class probe scored 0.918 macro recall grouped by object, 0.80 on held-back
spectra): folds that share a survey program, a plate or a data release share the
pipeline, the target selection and the calibration of the spectra. The source group of
every labelled spectrum therefore comes from a committed file
(``configs/source_groups.csv``), fixed before any recipe is tried, and whole groups go to
one fold (:func:`source_folds`): the probe that scores a spectrum never saw its source,
and the temperature it is scored with was fitted on yet other sources.

The file is a CSV with a header ``folder,group`` (``#`` lines are comments). A spectrum
belongs to the row whose ``folder`` is the longest one that occurs as whole path
components in the directory of its source file.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...exceptions import ConfigError

__all__ = ["load_source_groups", "source_groups", "source_folds"]


def load_source_groups(path: str | os.PathLike) -> dict[str, str]:
    """``{folder: group}`` of a source-group file (see the module docstring).

    Raises
    ------
    ConfigError
        The file is missing, has no ``folder,group`` header, an empty field, a folder
        listed twice or no rows.
    """
    path = Path(path)
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    except OSError as err:
        raise ConfigError(f"cannot read the source-group file {path}: {err}") from err
    rows = list(csv.reader(lines))
    if not rows or [c.strip() for c in rows[0]] != ["folder", "group"]:
        raise ConfigError(f"{path}: the first row must be the header 'folder,group'")
    out: dict[str, str] = {}
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or not all(c.strip() for c in row):
            raise ConfigError(f"{path}: row {n} ({','.join(row)!r}) is not 'folder,group'")
        folder, group = row[0].strip().strip("/"), row[1].strip()
        if folder in out:
            raise ConfigError(f"{path}: folder {folder!r} is listed twice")
        out[folder] = group
    if not out:
        raise ConfigError(f"{path}: no source groups")
    return out


def source_groups(source_files: Sequence[str], groups: dict[str, str]) -> np.ndarray:
    """The source group of every source file (longest matching folder of ``groups``).

    Raises
    ------
    ConfigError
        Files that no folder matches (up to five of their directories are named).
    """
    folders = sorted(groups, key=len, reverse=True)
    out, unmatched = [], set()
    for f in source_files:
        directory = "/" + str(Path(str(f)).parent).replace(os.sep, "/").strip("/") + "/"
        match = next((d for d in folders if f"/{d}/" in directory), None)
        if match is None:
            unmatched.add(directory)
        out.append(groups.get(match, ""))
    if unmatched:
        shown = ", ".join(sorted(unmatched)[:5])
        raise ConfigError(f"{len(unmatched)} source folder(s) have no source group ({shown}); "
                          "add them to the source-group file")
    return np.asarray(out, dtype=str)


def source_folds(groups: Sequence[str], k: int, weights: Sequence[float] | None = None) -> np.ndarray:
    """The fold (``0 .. k-1``) of every row, whole groups per fold, folds balanced by weight.

    Deterministic: groups are placed heaviest first (ties: more rows, then by name) into the
    fold with the least weight so far (ties: fewer rows, then the lowest fold). ``weights``
    (one per row, default 1) say what to balance: e.g. 0 for spectral-library rows, so that
    every fold holds survey spectra to fit a temperature on however large a library is.

    Raises
    ------
    ConfigError
        ``k < 3``, fewer groups than folds, or weights that are not one finite,
        non-negative value per row.
    """
    groups = np.asarray(groups, dtype=str)
    w = np.ones(groups.size) if weights is None else np.asarray(weights, dtype=np.float64)
    names, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if int(k) != k or k < 3:
        raise ConfigError(f"source-grouped cross-validation needs at least 3 folds, got {k!r}")
    if names.size < k:
        raise ConfigError(f"{names.size} source group(s) cannot fill {k} folds")
    if w.shape != groups.shape or not np.all(np.isfinite(w)) or (w < 0).any():
        raise ConfigError(f"source_folds needs one finite, non-negative weight per row ({groups.size}), "
                          f"got {w.size}")
    group_weight = np.bincount(inverse, weights=w, minlength=names.size)
    load, rows = np.zeros(int(k)), np.zeros(int(k), dtype=np.int64)
    fold_of_group = np.zeros(names.size, dtype=np.int64)
    for i in sorted(range(names.size), key=lambda i: (-group_weight[i], -counts[i], names[i])):
        fold = min(range(int(k)), key=lambda f: (load[f], rows[f], f))
        fold_of_group[i] = fold
        load[fold] += group_weight[i]
        rows[fold] += counts[i]
    return fold_of_group[inverse]
