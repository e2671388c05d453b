"""Scores of the shipped predictors: class recall by survey, calibration, template combination,
regression baselines, the reliability figure, and the summary written into the encoder card."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .crossval import CONFIDENT, ECE_BINS, calibration_report, group_recalls, interval, recall_report

__all__ = ["MACRO_GROUPS", "LIBRARIES", "TEMPLATE_CLASSES", "class_scores", "reliability_figure",
           "template_combination_cv", "regression_baselines", "keep_previous", "card_summary",
           "update_card", "update_anomaly", "to_json"]

logger = logging.getLogger(__name__)

#: The survey groups of the class macro recall.
MACRO_GROUPS = {"SDSS/BOSS/eBOSS": ("sdss", "boss", "eboss"), "LAMOST": ("lamost_lrs", "lamost_mrs"),
                "DESI": ("desi",), "MILES": ("miles",)}
#: Spectral libraries: left out of the calibration fits and scores ("survey spectra").
LIBRARIES = ("miles", "xshooter")
#: Template classes of the redshift scan, in the order of the cached chi-square columns.
TEMPLATE_CLASSES = ("GALAXY", "QSO", "STAR")


def class_scores(task: Any, prob: np.ndarray, yy: np.ndarray, ss: np.ndarray, flags: np.ndarray | None = None,
                 prob_raw: np.ndarray | None = None, sources: np.ndarray | None = None) -> dict[str, Any]:
    """Recall (all rows, the macro groups, each group and survey) and calibration of class
    probabilities ``prob`` of rows with labels ``yy`` and surveys ``ss``; with ``flags``
    also the accuracy of confident flag-0 rows; with ``prob_raw`` the uncalibrated scores;
    with ``sources`` the recall per source group and the worst group
    (:func:`~omnispectra.training.predictors.crossval.group_recalls`)."""
    from ...evaluation import calibration as cal

    pred = prob.argmax(1)
    macro_mask = np.isin(ss, [s for g in MACRO_GROUPS.values() for s in g])
    survey_mask = ~np.isin(ss, LIBRARIES)
    report = {
        "all": recall_report(yy, pred, task.classes),
        "macro_surveys": {"surveys": MACRO_GROUPS, **recall_report(yy[macro_mask], pred[macro_mask],
                                                                   task.classes)},
        "groups": {g: recall_report(yy[np.isin(ss, s)], pred[np.isin(ss, s)], task.classes)
                   for g, s in MACRO_GROUPS.items()},
        "surveys": {s: recall_report(yy[ss == s], pred[ss == s], task.classes) for s in sorted(set(ss))},
        "calibration": {
            "rows": f"evaluation folds of survey spectra (libraries {list(LIBRARIES)} left out)",
            "temperature_scaled": calibration_report(prob[survey_mask], yy[survey_mask]),
            **({"uncalibrated": calibration_report(prob_raw[survey_mask], yy[survey_mask])}
               if prob_raw is not None else {}),
            "with_libraries": calibration_report(prob, yy),
        },
    }
    if sources is not None:
        report["sources"] = group_recalls(yy, pred, sources, task.classes)
    if flags is not None:  # what a user keeps: confident rows without an input warning
        clean = survey_mask & (flags == 0)
        right, n_sure = cal.confident_accuracy(prob[clean], yy[clean], CONFIDENT)
        report["calibration"]["flag0"] = {
            "rows": "survey spectra of the evaluation folds whose input flags (OUTSIDE_SUPPORT, FEW_TOKENS, "
                    "LOW_SN) are 0; the ANOMALY bit is not evaluated here",
            "n": int(clean.sum()), "share_of_survey_rows": float(clean.sum() / max(survey_mask.sum(), 1)),
            f"accuracy_p_ge_{CONFIDENT}": interval(right, n_sure)}
    return report


def reliability_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, path: Path) -> str:
    """Write the reliability diagram of ``{label: (probabilities, labels)}`` to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ...evaluation import calibration as cal
    from ...fileio import atomic_write

    fig = cal.plot_reliability({k: cal.reliability_curve(p, y, ECE_BINS) for k, (p, y) in curves.items()},
                               title=title)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return str(path)


def template_combination_cv(task: Any, prob: np.ndarray, class_chi2: np.ndarray, y: np.ndarray,
                            surveys: np.ndarray, folds: np.ndarray, flags: np.ndarray | None,
                            figures: Path | None, sources: np.ndarray | None = None,
                            balance_groups: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Cross-validate the network + template class (:mod:`omnispectra.class_evidence`).

    ``prob`` are out-of-fold calibrated probe probabilities (each row's from the probe of
    the round that evaluated it); ``class_chi2`` the ``(N, 3)`` best chi-square of each
    :data:`TEMPLATE_CLASSES`. Round ``r`` fits the combination on the rows of the other
    folds (survey spectra only, as the temperature) and scores fold ``r``; the shipped
    combination is fitted on all survey rows. ``sources``: source groups of the rows
    (reported per group; with ``balance_groups`` each group weighs the same in the
    combination's fit). Returns
    ``(report, shipped parameters)``; the report's ``per_round`` are the rounds' fitted
    parameters in fold order.
    """
    from ...class_evidence import combine, template_evidence
    from ...evaluation.calibration import expected_calibration_error, fit_template_combination
    from ...exceptions import ConfigError

    chi2 = [dict(zip(TEMPLATE_CLASSES, row, strict=True)) for row in class_chi2]
    evidence = template_evidence(chi2, task.classes)
    survey = ~np.isin(surveys, LIBRARIES)
    if balance_groups and sources is None:
        raise ConfigError("balancing the template combination by source group needs the source groups")
    weigh = sources if balance_groups else None
    combined = np.empty_like(prob)
    per_round = []
    for r in np.unique(folds):
        fit_rows = (folds != r) & survey
        params = fit_template_combination(prob[fit_rows], evidence[fit_rows], y[fit_rows], task.classes,
                                          groups=None if weigh is None else weigh[fit_rows])
        per_round.append(params)
        combined[folds == r] = combine(prob[folds == r], evidence[folds == r], params)
    report = {"per_round": per_round, "rows_without_template_fit": int((~np.isfinite(evidence).all(1)).sum()),
              **class_scores(task, combined, y, surveys, flags, sources=sources)}
    if figures is not None:
        ece = {name: expected_calibration_error(p[survey], y[survey], ECE_BINS)
               for name, p in (("network", prob), ("combined", combined))}
        report["reliability_diagram"] = reliability_figure(
            {f"network (ECE {ece['network']:.3f})": (prob[survey], y[survey]),
             f"network + templates (ECE {ece['combined']:.3f})": (combined[survey], y[survey])},
            f"source class, survey spectra, N = {survey.sum()}",
            figures / "reliability-source-class-templates.png")
    final = fit_template_combination(prob[survey], evidence[survey], y[survey], task.classes,
                                     groups=None if weigh is None else weigh[survey])
    final["fold"] = ("fitted on the out-of-fold calibrated probabilities of the grouped cross-validation "
                     f"probes and one template fit per row, survey spectra only (libraries {list(LIBRARIES)} "
                     "left out)")
    return report, final


def regression_baselines(task: Any, yt: np.ndarray, rounds: list[dict[str, np.ndarray]],
                         baseline_x: np.ndarray | None, metrics: Any) -> dict[str, Any]:
    """Scores of the training mean (and, with resampled fluxes ``baseline_x``, of PCA + ridge
    and kNN in PCA space) trained on the same folds; ``metrics(rows, pred)`` scores them."""
    from ...evaluation import baselines

    trivial, ridge, knn = [], [], []
    for idx in rounds:
        tr, ev = idx["train"], idx["evaluation"]
        trivial.append(baselines.trivial_predict(yt[tr], ev.size, task.kind))
        if baseline_x is not None:
            ridge.append(baselines.pca_ridge(baseline_x[tr], yt[tr], baseline_x[ev]))
            knn.append(baselines.knn_pca(baseline_x[tr], yt[tr], baseline_x[ev]))
    ev_rows = np.concatenate([idx["evaluation"] for idx in rounds])
    scores = {"trivial": metrics(ev_rows, np.concatenate(trivial))}
    if baseline_x is not None:
        scores["pca_ridge"] = metrics(ev_rows, np.concatenate(ridge))
        scores["knn_pca"] = metrics(ev_rows, np.concatenate(knn))
    return scores


def keep_previous(report: dict[str, Any], path: Path) -> None:
    """Keep the entries of ``path`` (an earlier ``predictors.json`` of the *same* encoder)
    that this run did not redo (other tasks, the anomaly threshold), each marked with the
    command and date that made it (``kept_from``)."""
    if not path.is_file():
        return
    previous = json.loads(path.read_text())
    if previous.get("encoder", {}).get("sha256") != report["encoder"]["sha256"]:
        return
    origin = {"command": previous.get("command"), "created": previous.get("created")}
    for name, entry in previous.get("predictors", {}).items():
        if name not in report["predictors"]:
            report["predictors"][name] = {**entry, "kept_from": entry.get("kept_from", origin)}
    if "anomaly" not in report and "anomaly" in previous:
        report["anomaly"] = {**previous["anomaly"], "kept_from": previous["anomaly"].get("kept_from", origin)}


def to_json(value: Any) -> Any:
    """``json.dumps`` default of the reports: numpy arrays and scalars as Python values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer):
        return int(value)
    return float(value)


def card_summary(entry: dict[str, Any]) -> dict[str, Any]:
    """The encoder card's summary of one ``predictors.json`` entry."""
    cv = entry["cross_validated"]
    item: dict[str, Any] = {"file": entry["file"] if entry.get("shipped", True) else None,
                            "recipe": entry["recipe"]["name"], "n": entry["n_labelled"],
                            "calibration": entry.get("calibration")}
    if "macro_surveys" not in cv:
        item["scores"] = {m: {k: v for k, v in s.items() if k.startswith(("mae_", "mse_norm"))}
                          for m, s in cv["scores"].items()}
        return item
    item.update(macro_recall=cv["macro_surveys"]["macro_recall"], recall=cv["all"]["recall"],
                calibration_scores=cv["calibration"]["temperature_scaled"])
    if "with_templates" in cv:
        joined = cv["with_templates"]
        item["with_templates"] = {"macro_recall": joined["macro_surveys"]["macro_recall"],
                                  "recall": joined["all"]["recall"],
                                  "calibration_scores": joined["calibration"]["temperature_scaled"]}
    return item


def update_card(card_path: Path, report: dict[str, Any]) -> None:
    """Write the anomaly threshold and a summary of the cross-validated scores into the
    encoder card (atomically)."""
    from ...fileio import write_text

    card = json.loads(card_path.read_text())
    summary: dict[str, Any] = {"details": "predictors.json", "cross_validation": report["cross_validation"]}
    for name, entry in report["predictors"].items():
        summary[name] = card_summary(entry)
    card["predictors"] = summary
    if "anomaly" in report:
        card["anomaly"] = _card_anomaly(report["anomaly"])
    write_text(card_path, json.dumps(card, indent=2, default=to_json) + "\n")


def _card_anomaly(entry: dict[str, Any]) -> dict[str, Any]:
    """What the encoder card keeps of a measured anomaly threshold."""
    return {k: entry[k] for k in ("statistic", "p99", "n_validation", "n_masks") if k in entry}


def update_anomaly(report_path: Path, card_path: Path, entry: dict[str, Any]) -> None:
    """Replace the anomaly threshold (an entry of :func:`~omnispectra.training.predictors.shipping.
    measure_anomaly_threshold`) in a predictors report and its encoder card, atomically, leaving
    the rest of both as they are (``scripts/measure_anomaly_threshold.py``)."""
    from ...fileio import write_text

    for path, value, indent in ((report_path, entry, 1), (card_path, _card_anomaly(entry), 2)):
        document = json.loads(Path(path).read_text())
        document["anomaly"] = value
        write_text(path, json.dumps(document, indent=indent, default=to_json) + "\n")
