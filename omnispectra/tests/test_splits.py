"""The one object-hash split."""

import numpy as np
import pytest

from omnispectra import splits


def test_same_object_in_two_surveys_is_on_one_side():
    for seed in range(20):
        assert splits.side_of("s0505", 0.5, seed) == splits.side_of("BD+01 2916", 0.5, seed)
        assert splits.side_of("BD+012916", 0.5, seed) == splits.side_of(" S0505 ", 0.5, seed)
        ids = ("sdss:1237661385994338550", "spec-7339-57918-0737", "rm017")
        sides = {splits.side_of(e, 0.5, seed) for e in ids}
        assert len(sides) == 1


def test_hash_threshold_is_independent_of_the_other_objects():
    ids = [f"obj{k}" for k in range(400)]
    full = splits.is_validation(ids, 0.25, seed=3)
    assert 60 < full.sum() < 140
    assert np.array_equal(splits.is_validation(ids[:50], 0.25, seed=3), full[:50])
    assert not np.array_equal(splits.is_validation(ids, 0.25, seed=4), full)
    train, val = splits.split_by_object(ids + ids[:10], 0.25, seed=3)
    assert not set(train) & set(val) and len(train) + len(val) == 410
    assert {(ids + ids[:10])[i] for i in val} == {ids[i] for i in np.flatnonzero(full)}
    assert splits.object_hash("obj1", 0) == pytest.approx(splits.object_hash("OBJ 1", 0))


def test_keep_both_sides_and_errors():
    train, val = splits.split_by_object(["a", "b"], 0.01, 0, surveys=["x", "x"], keep_both_sides=True)
    assert len(train) == 1 and len(val) == 1
    with pytest.raises(ValueError):
        splits.split_by_object(["a"], 1.0)


def test_fold_of_groups_objects_and_follows_the_hash():
    ids = [f"obj{i}" for i in range(400)] + ["BD+01 2916", "s0505", "", ""]
    folds = splits.fold_of(ids, 5, seed=3)
    assert folds.dtype == np.int64 and set(folds.tolist()) == {0, 1, 2, 3, 4}
    # the fold is floor(hash * k): the same number the validation split thresholds
    assert folds[7] == int(splits.object_hash("obj7", 3) * 5)
    # one object (aliases resolved) is in one fold; missing ids are separate objects
    assert folds[400] == folds[401]
    assert folds[402] == int(splits.object_hash("\x00row402", 3) * 5)
    # independent of the other rows and of their order
    assert splits.fold_of(ids[::-1], 5, seed=3)[::-1][:400].tolist() == folds[:400].tolist()
    assert splits.fold_of(["obj7"], 5, seed=3)[0] == folds[7]
    # roughly balanced, and fold 0 of k=5 is exactly the validation side of fraction 0.2
    assert np.bincount(folds[:400]).min() > 50
    assert ((folds[:400] == 0) == splits.is_validation(ids[:400], 0.2, seed=3)).all()
    with pytest.raises(ValueError, match="k must be"):
        splits.fold_of(ids, 1)
