"""Grouped cross-validation, recipe choice and post-hoc calibration of probes.

The protocol (shared by the shipped predictors and a user's own probe):

1. **Grouped K-fold**: a row's fold is :func:`omnispectra.splits.fold_of` of its group
   (object id), so one group is in one fold. Round ``r`` scores fold ``r``
   (*evaluation*), fits calibration and chooses the recipe on fold ``r + 1 mod K``
   (*calibration*) and trains on the other ``K - 2`` folds (:func:`cv_rounds`). Every row
   is scored exactly once; scores are pooled over the rounds.
2. **Recipe**: every candidate is trained in every round (:func:`run_cv`); the one with
   the best pooled calibration-fold score wins (:func:`choose_recipe`: macro recall for
   classes, normalized MSE for regression). Evaluation folds never take part in a choice.
3. **Calibration** (:func:`calibrate_classes`, :func:`calibrate_spread`): one temperature
   (classes) or one ``sigma_scale`` per target (ensembles) per round on the round's
   calibration fold, applied to its evaluation fold; the shipped value is fitted on the
   pooled calibration-fold outputs of the K cross-validation probes (each row's output
   from a probe that did not see it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...exceptions import ConfigError
from .recipes import Recipe

__all__ = ["ECE_BINS", "ECE_EQUAL_COUNT_BINS", "CONFIDENT", "SIDES", "MIN_GROUP_ROWS", "group_recalls",
           "grouped_folds", "cv_rounds", "make_probe", "train_recipe",
           "fitted_member_outputs", "with_engine", "run_cv", "pooled", "side_means", "interval",
           "recall_report", "calibration_report", "fitted_targets", "choose_recipe", "calibrate_classes",
           "calibrate_spread"]

logger = logging.getLogger(__name__)

#: Bins of the expected calibration error.
ECE_BINS = 15
#: Equal-count bins of the second expected calibration error (the issue #23 protocol).
ECE_EQUAL_COUNT_BINS = 10
#: Fewest rows of a source group that takes part in the worst-group choice.
MIN_GROUP_ROWS = 20
#: Top probability of a "confident" row.
CONFIDENT = 0.95
#: The scored sides of a round.
SIDES = ("calibration", "evaluation")


def grouped_folds(groups: Sequence[Any], k: int, seed: int = 0) -> np.ndarray:
    """The fold (``0 .. k-1``) of every row: :func:`omnispectra.splits.fold_of` of its group.

    Raises
    ------
    ConfigError
        ``k < 3`` (a round needs an evaluation, a calibration and a training fold) or a
        fold without rows (fewer groups than folds).
    """
    from ...splits import fold_of

    if int(k) != k or k < 3:
        raise ConfigError(f"grouped cross-validation needs at least 3 folds, got {k!r}")
    folds = fold_of(list(groups), int(k), seed)
    sizes = np.bincount(folds, minlength=int(k))
    if (sizes == 0).any():
        empty = np.flatnonzero(sizes == 0).tolist()
        raise ConfigError(f"{len(set(map(str, groups)))} group(s) leave fold(s) {empty} of {k} empty; "
                          "use fewer folds or more groups")
    return folds


def cv_rounds(folds: np.ndarray, k: int) -> list[dict[str, np.ndarray]]:
    """Row positions ``train`` / ``calibration`` / ``evaluation`` of each of the ``k`` rounds."""
    out = []
    for r in range(k):
        cal = (r + 1) % k
        out.append({"evaluation": np.flatnonzero(folds == r), "calibration": np.flatnonzero(folds == cal),
                    "train": np.flatnonzero((folds != r) & (folds != cal))})
    return out


def make_probe(task: Any, dim: int, recipe: Recipe, encoder_desc: dict[str, Any] | None = None) -> Any:
    """An untrained :class:`~omnispectra.probes.Probe` of ``recipe`` for ``task``
    (a :class:`omnispectra.evaluation.harness.Task`: kind, classes or targets, transforms, units)."""
    from ...probes import Probe

    names = task.classes if task.kind == "classification" else task.targets
    return Probe(dim, task.kind, names, head=recipe.head, hidden=recipe.hidden, dropout=recipe.dropout,
                 members=recipe.members, transforms=task.transforms, units=task.units, encoder=encoder_desc)


def train_recipe(task: Any, emb: np.ndarray, y: np.ndarray, recipe: Recipe, seed: int = 0,
                 encoder_desc: dict[str, Any] | None = None, steps_scale: float = 1.0) -> Any:
    """A probe of ``recipe`` trained on embeddings ``emb`` and targets ``y`` (class indices
    or physical values); ``seed`` seeds the initialization and the batch order."""
    import torch

    from ..probe_module import fit_probe_on_embeddings

    torch.manual_seed(seed)
    probe = make_probe(task, emb.shape[1], recipe, encoder_desc)
    steps = max(1, int(round(recipe.steps * steps_scale)))
    return fit_probe_on_embeddings(probe, emb, y, seed=seed, batch_size=64, steps=steps, lr=recipe.lr,
                                   loss=recipe.loss)


def fitted_member_outputs(probe: Any, emb: np.ndarray) -> np.ndarray:
    """``(members, N, outputs)``: logits, or each member's prediction in the fitted space
    (e.g. log10 Teff), float64."""
    raw = probe.member_outputs(emb).astype(np.float64)
    return raw if probe.kind == "classification" else probe.denormalize(raw)


def with_engine(recipe: Recipe, emb: np.ndarray, y: np.ndarray,
                engine: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """Training arrays of ``recipe``: the real rows, plus the engine rows when the recipe asks."""
    if not recipe.engine or engine is None:
        return emb, y
    return np.concatenate([emb, engine[0]]), np.concatenate([y, engine[1]])


def run_cv(task: Any, emb: np.ndarray, y: np.ndarray, rounds: list[dict[str, np.ndarray]],
           candidates: Sequence[Recipe], seed: int = 0, steps_scale: float = 1.0,
           engine: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, list[dict[str, np.ndarray]]]:
    """Outputs of every candidate on every round's calibration and evaluation folds.

    Round ``r`` trains with seed ``seed + 100 r``. ``engine`` (embeddings, targets) join
    the training folds of recipes with ``engine=True``; they are never scored.

    Returns
    -------
    dict
        ``{name: [{"calibration": (M, n, T), "evaluation": (M, n, T), "probe": Probe} per
        round]}`` (``M`` members; logits for classes, fitted-space predictions for
        regression; the round's trained probe).
    """
    out: dict[str, list[dict[str, np.ndarray]]] = {}
    for recipe in candidates:
        per_round = []
        for r, idx in enumerate(rounds):
            t0 = time.perf_counter()
            x_train, y_train = with_engine(recipe, emb[idx["train"]], y[idx["train"]], engine)
            probe = train_recipe(task, x_train, y_train, recipe, seed=seed + 100 * r, steps_scale=steps_scale)
            per_round.append({**{side: fitted_member_outputs(probe, emb[idx[side]]) for side in SIDES},
                              "probe": probe})
            logger.info("%s: round %d %s (%.0f s)", task.name, r, recipe.name, time.perf_counter() - t0)
        out[recipe.name] = per_round
    return out


def pooled(rounds: list[dict[str, np.ndarray]], side: str) -> np.ndarray:
    """Row positions of ``side`` over all rounds, in round order."""
    return np.concatenate([idx[side] for idx in rounds])


def side_means(per_round: list[dict[str, np.ndarray]], side: str) -> np.ndarray:
    """Member-mean outputs of ``side`` over all rounds, rows as :func:`pooled`."""
    return np.concatenate([o[side].mean(0) for o in per_round])


def interval(k: int, n: int) -> dict[str, Any]:
    """``{"value": k/n, "k", "n", "wilson95": [lo, hi]}`` (value NaN when ``n`` is 0)."""
    from ...evaluation.stats import wilson_interval

    lo, hi = wilson_interval(int(k), int(n))
    return {"value": (k / n) if n else float("nan"), "k": int(k), "n": int(n), "wilson95": [lo, hi]}


def recall_report(y: np.ndarray, pred: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Per-class recall (k, N, Wilson 95%), macro recall over present classes, accuracy."""
    per = {c: interval(((pred == k) & (y == k)).sum(), (y == k).sum()) for k, c in enumerate(classes)}
    present = [v["value"] for v in per.values() if v["n"]]
    return {"recall": per, "macro_recall": float(np.mean(present)) if present else float("nan"),
            "accuracy": interval((pred == y).sum(), y.size)}


def calibration_report(prob: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """ECE (:data:`ECE_BINS` equal-width and :data:`ECE_EQUAL_COUNT_BINS` equal-count bins),
    Brier score and accuracy among rows with top probability
    >= :data:`CONFIDENT` of class probabilities ``prob`` and labels ``y``."""
    from ...evaluation import calibration as cal

    right, n_sure = cal.confident_accuracy(prob, y, CONFIDENT)
    return {"n": int(y.size), f"ece_{ECE_BINS}_bins": cal.expected_calibration_error(prob, y, ECE_BINS),
            f"ece_{ECE_EQUAL_COUNT_BINS}_equal_count_bins": cal.expected_calibration_error(
                prob, y, ECE_EQUAL_COUNT_BINS, equal_count=True),
            "brier": cal.brier_score(prob, y), f"accuracy_p_ge_{CONFIDENT}": interval(right, n_sure)}


def fitted_targets(task: Any, y: np.ndarray) -> np.ndarray:
    """Targets in the space the probe fits: class indices as they are, regression targets
    transformed (:func:`omnispectra.evaluation.harness.transform_targets`, e.g. log10 Teff)."""
    from ...evaluation.harness import transform_targets

    return y if task.kind == "classification" else transform_targets(task, y)


def group_recalls(y: np.ndarray, pred: np.ndarray, groups: np.ndarray, classes: Sequence[str],
                  min_rows: int = MIN_GROUP_ROWS) -> dict[str, Any]:
    """Recall per source group (:func:`recall_report`) and the worst group's macro recall
    among groups of at least ``min_rows`` rows (``worst``: ``{"group", "macro_recall"}``;
    the worst of all groups when none is that large)."""
    groups = np.asarray(groups, dtype=str)
    per = {g: recall_report(y[groups == g], pred[groups == g], classes) for g in sorted(set(groups.tolist()))}
    big = [g for g in per if per[g]["accuracy"]["n"] >= min_rows] or list(per)
    worst = min(big, key=lambda g: (per[g]["macro_recall"], g))
    return {"groups": per, "worst": {"group": worst, "macro_recall": per[worst]["macro_recall"],
                                     "min_rows": int(min_rows)}}


def choose_recipe(task: Any, outputs: dict[str, list[dict[str, np.ndarray]]], y_fitted: np.ndarray,
                  rounds: list[dict[str, np.ndarray]],
                  groups: np.ndarray | None = None) -> tuple[str, dict[str, Any]]:
    """The candidate with the best pooled calibration-fold score, and every candidate's score.

    Classes: the highest macro recall (:func:`recall_report`) of the member-mean logits;
    with source ``groups`` (one per row) the highest worst-group macro recall
    (:func:`group_recalls`), ties broken by the pooled macro recall. Regression: the
    lowest normalized MSE (:func:`omnispectra.evaluation.harness.regression_metrics`,
    normalized by all rows' statistics) of the member-mean predictions. Ties go to the
    earlier candidate. ``y_fitted``: :func:`fitted_targets` of all rows.
    """
    from ...evaluation.harness import regression_metrics
    from ...probes import fit_normalization

    rows = pooled(rounds, "calibration")
    if task.kind == "classification":
        scores: dict[str, Any] = {}
        for name, o in outputs.items():
            pred = side_means(o, "calibration").argmax(1)
            macro = recall_report(y_fitted[rows], pred, task.classes)["macro_recall"]
            if groups is None:
                scores[name] = macro
            else:
                worst = group_recalls(y_fitted[rows], pred, np.asarray(groups)[rows], task.classes)["worst"]
                scores[name] = {"worst_group": worst, "macro_recall": macro}
        key = (lambda n: scores[n]) if groups is None else (
            lambda n: (scores[n]["worst_group"]["macro_recall"], scores[n]["macro_recall"]))
        return max(scores, key=key), scores
    mean, std = fit_normalization(y_fitted)  # only scales the normalized MSE
    scores = {name: regression_metrics(y_fitted[rows], side_means(o, "calibration"), task.targets, mean, std,
                                       task.transforms)["mse_norm"] for name, o in outputs.items()}
    return min(scores, key=scores.get), scores


def calibrate_classes(per_round: list[dict[str, np.ndarray]], y: np.ndarray,
                      rounds: list[dict[str, np.ndarray]],
                      fit_rows: np.ndarray | None = None) -> dict[str, Any]:
    """Temperature scaling of the chosen recipe's cross-validated logits.

    Parameters
    ----------
    per_round : list of dict
        The chosen recipe's outputs (:func:`run_cv`).
    y : array (N,)
        Class index of every row.
    rounds : list of dict
        :func:`cv_rounds`.
    fit_rows : bool array (N,), optional
        Rows a temperature may be fitted on (e.g. survey spectra only); default all.

    Returns
    -------
    dict
        ``temperature_per_round``; ``prob`` (calibrated, per round) and ``prob_raw`` (T = 1)
        of the pooled evaluation rows; ``temperature`` fitted on the pooled calibration-fold
        logits; ``n`` the rows that fit it.
    """
    from ...evaluation import calibration as cal

    keep = np.ones(y.size, bool) if fit_rows is None else np.asarray(fit_rows, bool)
    temps = []
    for r, (o, idx) in enumerate(zip(per_round, rounds, strict=True)):
        ok = keep[idx["calibration"]]
        if not ok.any():
            raise ConfigError(f"round {r}'s calibration fold holds no row a temperature may be fitted on "
                              "(e.g. only spectral-library spectra); balance the folds by those rows")
        temps.append(cal.fit_temperature(o["calibration"].mean(0)[ok], y[idx["calibration"]][ok]))
    prob = np.concatenate([cal.softmax(o["evaluation"].mean(0), t)
                           for o, t in zip(per_round, temps, strict=True)])
    cal_rows = pooled(rounds, "calibration")
    ok = keep[cal_rows]
    final = cal.fit_temperature(side_means(per_round, "calibration")[ok], y[cal_rows][ok])
    return {"temperature_per_round": temps, "prob": prob,
            "prob_raw": cal.softmax(side_means(per_round, "evaluation")), "temperature": final,
            "n": int(ok.sum())}


def calibrate_spread(per_round: list[dict[str, np.ndarray]], yt: np.ndarray,
                     rounds: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """``sigma_scale`` of an ensemble's spread (:func:`omnispectra.probes.ensemble_spread`)
    so that +-1 sigma holds 68.3% of the rows, per target.

    ``yt``: fitted-space targets (:func:`fitted_targets`) of all rows. Returns
    ``sigma_scale_per_round``; ``sigma`` (per-round scale times spread) and ``coverage``
    (per target) of the pooled evaluation rows; ``sigma_scale`` fitted on the pooled
    calibration-fold predictions; ``n`` the calibration rows.
    """
    from ...evaluation import calibration as cal
    from ...probes import ensemble_spread

    scales = [cal.fit_sigma_scale(o["calibration"].mean(0) - yt[idx["calibration"]],
                                  ensemble_spread(o["calibration"]))
              for o, idx in zip(per_round, rounds, strict=True)]
    sigma = np.concatenate([s * ensemble_spread(o["evaluation"])
                            for s, o in zip(scales, per_round, strict=True)])
    residual = side_means(per_round, "evaluation") - yt[pooled(rounds, "evaluation")]
    cal_rows = pooled(rounds, "calibration")
    cal_pred = np.concatenate([o["calibration"] for o in per_round], axis=1)
    final = cal.fit_sigma_scale(cal_pred.mean(0) - yt[cal_rows], ensemble_spread(cal_pred))
    return {"sigma_scale_per_round": scales, "sigma": sigma, "residual": residual,
            "coverage": cal.interval_coverage(residual, sigma), "sigma_scale": final, "n": int(cal_rows.size)}
