"""The one train/validation split of the project: a seeded hash of a canonical object id.

Every part that holds data out - pretraining (:mod:`omnispectra.training`), the
predictors, the evaluation harness and the data engine (:mod:`omnispectra.engine`,
whose noise donors and augmented real spectra follow their object's side) - asks this
module which side an object is on, so one physical object is never on both sides.

The rule
--------
An object is on the validation side when ``blake2b(seed, canonical_object_id)``, read
as a number in [0, 1), is below ``fraction``. The survey is *not* part of the hash: the
same star observed by two surveys or libraries falls on one side. The decision depends
only on the id, the seed and the fraction (never on which other objects are present,
their order, or the machine), so a spectrum added later never moves another object.

:func:`canonical_object_id` maps ids that name one object to one key: it strips and
lower-cases the id, removes blanks, and looks it up in :data:`OBJECT_ALIASES`, a small
table of known cross-identifications (e.g. MILES ``s0505`` = X-shooter ``BD+01 2916``).
Repeat epochs of one object share an ``object_id`` already in the readers (the four
SDSS-RM RM017 epochs all carry the photometric objid ``sdss:1237661385994338550``); the
table names that object ``rm017`` so a file-level id maps there too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_SEED",
    "DEFAULT_VALIDATION_FRACTION",
    "OBJECT_ALIASES",
    "canonical_object_id",
    "fold_of",
    "object_hash",
    "is_validation",
    "side_of",
    "split_by_object",
]

#: Seed of the project's split (pretraining uses ``fraction=0.01`` of a large corpus;
#: the engine's realism measurements use 0.2 of the small labelled set).
DEFAULT_SEED = 0
DEFAULT_VALIDATION_FRACTION = 0.2

#: Known cross-identifications: lower-case id without blanks -> canonical key.
OBJECT_ALIASES: dict[str, str] = {
    # X-shooter Spectral Library X0360 (OBJECT = BD+012916) is MILES s0505.
    "bd+012916": "s0505",
    "xsl_spectrum_x0360_uvb": "s0505",
    # SDSS-RM quasar RM017: one SDSS-I and three eBOSS/RM epochs of one object.
    "sdss:1237661385994338550": "rm017",
    "spec-1325-52762-0133": "rm017",
    "spec-7338-57859-0739": "rm017",
    "spec-7339-57918-0737": "rm017",
    "spec-7340-57576-0740": "rm017",
}


def canonical_object_id(object_id: Any) -> str:
    """The key an object is hashed by: stripped, lower-case, blanks removed, aliases resolved.

    Parameters
    ----------
    object_id : str or any
        An ``object_id`` as the readers write it (``meta['object_id']``).

    Returns
    -------
    str
        ``""`` for a missing id (callers decide what a missing id means).
    """
    key = "".join(str("" if object_id is None else object_id).split()).lower()
    return OBJECT_ALIASES.get(key, key)


def object_hash(object_id: Any, seed: int = DEFAULT_SEED) -> float:
    """The object's position in [0, 1): ``blake2b(seed, canonical id)`` over 2**64."""
    key = canonical_object_id(object_id)
    digest = hashlib.blake2b(f"{int(seed)}\x1f{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")


def is_validation(object_ids: Sequence[Any] | Any, fraction: float = DEFAULT_VALIDATION_FRACTION,
                  seed: int = DEFAULT_SEED) -> np.ndarray:
    """Boolean array: True where the object is on the validation side.

    A missing (empty) id is an object of its own, keyed by its row position.
    """
    _check_fraction(fraction)
    ids = [object_ids] if isinstance(object_ids, str) else list(object_ids)
    out = np.zeros(len(ids), dtype=bool)
    for i, oid in enumerate(ids):
        key = oid if canonical_object_id(oid) else f"\x00row{i}"
        out[i] = object_hash(key, seed) < fraction
    return out


def side_of(object_id: Any, fraction: float = DEFAULT_VALIDATION_FRACTION,
            seed: int = DEFAULT_SEED) -> str:
    """``"validation"`` or ``"train"`` for one object."""
    _check_fraction(fraction)
    return "validation" if object_hash(object_id, seed) < fraction else "train"


def split_by_object(object_ids: Sequence[Any], fraction: float = DEFAULT_VALIDATION_FRACTION,
                    seed: int = DEFAULT_SEED, *, surveys: Sequence[str] | None = None,
                    keep_both_sides: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Row positions ``(train_idx, val_idx)`` of the object-hash split.

    Parameters
    ----------
    object_ids : sequence
        One object id per row; rows of one object always land on one side.
    fraction : float
        Expected fraction of objects on the validation side, in [0, 1).
    seed : int
        Seed of the hash.
    surveys : sequence of str, optional
        Only used with ``keep_both_sides``.
    keep_both_sides : bool
        For tiny data sets: in a survey with two or more objects where the hash rule put
        every object on one side (and ``fraction > 0``), move the object whose hash is
        nearest the threshold to the other side. This is the only exception to the pure
        hash rule, and it only touches surveys the rule left one-sided.

    Returns
    -------
    (train_idx, val_idx) : sorted int64 arrays
    """
    _check_fraction(fraction)
    keys = np.array([canonical_object_id(o) or f"\x00row{i}" for i, o in enumerate(object_ids)], dtype=object)
    n = keys.size
    unique = sorted(set(keys.tolist()))
    score = {k: object_hash(k, seed) for k in unique}
    val_keys = {k for k in unique if score[k] < fraction}
    if keep_both_sides and fraction > 0 and n:
        groups = np.full(n, "", dtype=object) if surveys is None else np.asarray(surveys, dtype=object)
        if groups.shape != keys.shape:
            raise ValueError("object_ids and surveys must have the same length")
        for g in sorted(set(groups.tolist())):
            objs = sorted(set(keys[groups == g].tolist()))
            if len(objs) < 2:
                continue
            n_val = sum(k in val_keys for k in objs)
            if n_val == 0:
                val_keys.add(min(objs, key=lambda k: (score[k], k)))
            elif n_val == len(objs):
                val_keys.discard(max(objs, key=lambda k: (score[k], k)))
    is_val = np.fromiter((k in val_keys for k in keys), dtype=bool, count=n)
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64)


def fold_of(object_ids: Sequence[Any], k: int, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Cross-validation fold of each row: ``floor(object_hash * k)``, in ``0 .. k-1``.

    The grouped K-fold of the project, from the same hash as the train/validation
    split: all rows of one object (after :func:`canonical_object_id`) share a fold, and
    an object's fold depends only on its id, ``k`` and ``seed``. A missing (empty) id is
    an object of its own, keyed by its row position (as :func:`is_validation`).

    Parameters
    ----------
    object_ids : sequence
        One object id per row.
    k : int
        Number of folds, at least 2.
    seed : int
        Seed of the hash.

    Returns
    -------
    ndarray of int64, shape (N,)
    """
    if int(k) != k or k < 2:
        raise ValueError(f"k must be an integer >= 2, got {k!r}")
    k = int(k)
    ids = [object_ids] if isinstance(object_ids, str) else list(object_ids)
    folds = np.empty(len(ids), dtype=np.int64)
    for i, oid in enumerate(ids):
        key = oid if canonical_object_id(oid) else f"\x00row{i}"
        folds[i] = min(int(object_hash(key, seed) * k), k - 1)
    return folds
