#!/usr/bin/env python
"""Train, cross-validate and calibrate the predictors shipped with omnispectra.

Usage (the PyHammer templates in ``unknown.h5`` are templates, not observations: leave
them out; rows of the ``--exclude-surveys`` surveys are dropped anyway)::

    OMP_NUM_THREADS=1 python scripts/train_predictors.py omnispectra/data/omnispectra-default.safetensors \\
        $(ls corpus/*.h5 | grep -v unknown.h5) --engine engine/*.h5 --templates ../shared/data/templates \
        -o omnispectra/data/ --figures benchmarks/results/

Writes into ``-o``: ``probe-source-class.safetensors`` (with its temperature and, with
``--templates``, its template combination),
``probe-stellar-params.safetensors`` (an ensemble with its ``sigma_scale``) and, only
when it beats the training mean in cross-validation, ``probe-redshift.safetensors``
(each with a ``.json`` card), plus ``predictors.json`` with everything measured; into
the encoder card (``--card``, default ``<output>/omnispectra-default.json`` when it
exists) the anomaly threshold and a summary of the scores; into ``--figures`` the
reliability diagram of the class probabilities. Run with a subset of ``--tasks`` (or
``--no-anomaly``), it keeps the other entries of an existing ``predictors.json`` of the same
encoder, each marked ``kept_from`` (the command and date that made it).

Labels (:mod:`omnispectra.evaluation.harness`): source class GALAXY/QSO/STAR across
surveys; stellar parameters Teff (fitted as log10 Teff), logg, [Fe/H] of the MILES
stars; redshift of GALAXY and QSO spectra with a ``z`` label.

Protocol (frozen encoder, embeddings computed once):

1. **Grouped K-fold** (K = 5): each labelled row's fold is
   :func:`omnispectra.splits.fold_of` (``floor(object_hash * K)``), so one object is in
   one fold. Round ``r`` scores fold ``r`` (*evaluation*), fits calibration and chooses
   the recipe on fold ``r+1 mod K`` (*calibration*), and trains on the other ``K-2``
   folds. Every row is scored exactly once; the scores below are pooled over rounds.
2. **Recipe**: every candidate of a task is trained in every round; the recipe with the
   best pooled calibration-fold score is chosen (macro recall for classes, normalized
   MSE for regression). Evaluation folds never take part in a choice.
3. **Class calibration**: one temperature per round on that round's calibration fold
   (survey spectra only);
   ECE (15 bins), Brier score and the accuracy among rows with top probability >= 0.95
   on the evaluation folds of survey spectra (spectral libraries such as MILES left
   out: their stars are too easy and would make the calibration error trivially
   small), before and after scaling; per-class and per-survey recall with Wilson
   intervals; macro recall over SDSS/BOSS/eBOSS, LAMOST, DESI and MILES.
   With ``--templates DIR`` (the Redrock bases), every labelled spectrum is also fitted
   once by :class:`omnispectra.redshift.RedshiftFitter`, and the four numbers of the
   network + template class (:mod:`omnispectra.class_evidence`) are fitted on the
   out-of-fold calibrated probabilities of the other folds' rows (survey spectra only) and
   scored on each fold in turn; the shipped ones, fitted on all rows, go into the class
   probe's ``calibration``.
4. **Stellar parameters**: ensembles of >= 5 heads; the uncertainty is
   ``sigma_scale * spread``, the spread being the standard deviation (ddof 1) of the
   members' predictions in the fitted space (log10 Teff, logg, [Fe/H]);
   ``sigma_scale`` per output makes +-1 sigma hold 68.3% of a round's calibration
   fold; MAE and the +-1 sigma coverage on the evaluation folds, next to PCA + ridge
   and kNN in PCA space trained on the same folds.
5. **Shipped probes**: the chosen recipe refit on all labelled rows; the shipped
   temperature / sigma_scale are fitted on the pooled calibration-fold outputs of the
   K cross-validation probes (each row's output from a probe that did not see it).
6. **Anomaly threshold**: the 99th percentile of the anomaly statistic
   (:func:`anomaly_statistic`) over the validation side of the project's split
   (:func:`omnispectra.splits.is_validation`, fraction 0.2, seed 0) of every real
   spectrum in the corpus, all surveys pooled.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

CLASS_CANDIDATES = [
    {"name": "linear, 3000 steps, lr 1e-3", "head": "linear", "steps": 3000, "lr": 1e-3},
    {"name": "mlp [128], dropout 0.1, 2000 steps, lr 1e-3", "head": "mlp", "hidden": [128], "dropout": 0.1,
     "steps": 2000, "lr": 1e-3},
    {"name": "mlp [512], dropout 0.2, 4000 steps, lr 1e-3", "head": "mlp", "hidden": [512], "dropout": 0.2,
     "steps": 4000, "lr": 1e-3},
]
# ensembles only: their member spread is the per-spectrum uncertainty
STELLAR_CANDIDATES = [
    {"name": "5 x mlp [128], dropout 0.1, 2000 steps, lr 1e-3", "head": "mlp", "hidden": [128],
     "dropout": 0.1, "steps": 2000, "lr": 1e-3, "members": 5},
    {"name": "5 x mlp [512], dropout 0.2, 4000 steps, lr 1e-3", "head": "mlp", "hidden": [512],
     "dropout": 0.2, "steps": 4000, "lr": 1e-3, "members": 5},
    # absolute-error loss: the conditional median, less pulled by a few outlying labels
    {"name": "5 x mlp [128], dropout 0.1, 2000 steps, lr 1e-3, L1 loss", "head": "mlp", "hidden": [128],
     "dropout": 0.1, "steps": 2000, "lr": 1e-3, "members": 5, "loss": "l1"},
    {"name": "5 x mlp [512], dropout 0.2, 4000 steps, lr 1e-3, L1 loss", "head": "mlp", "hidden": [512],
     "dropout": 0.2, "steps": 4000, "lr": 1e-3, "members": 5, "loss": "l1"},
]
REDSHIFT_CANDIDATES = [
    {"name": "linear, 3000 steps, lr 1e-3", "head": "linear", "steps": 3000, "lr": 1e-3},
    {"name": "5 x mlp [128], dropout 0.1, 2000 steps, lr 1e-3", "head": "mlp", "hidden": [128],
     "dropout": 0.1, "steps": 2000, "lr": 1e-3, "members": 5},
]
CANDIDATES = {"source_class": CLASS_CANDIDATES, "stellar_params": STELLAR_CANDIDATES,
              "redshift": REDSHIFT_CANDIDATES}
FILES = {"source_class": "probe-source-class.safetensors",
         "stellar_params": "probe-stellar-params.safetensors",
         "redshift": "probe-redshift.safetensors"}
#: The survey groups of the class macro recall.
MACRO_GROUPS = {"SDSS/BOSS/eBOSS": ("sdss", "boss", "eboss"), "LAMOST": ("lamost_lrs", "lamost_mrs"),
                "DESI": ("desi",), "MILES": ("miles",)}
#: Spectral libraries: left out of the calibration scores ("survey spectra").
LIBRARIES = ("miles", "xshooter")
ECE_BINS = 15
CONFIDENT = 0.95
#: Template classes of the redshift scan, in the order of the cached chi-square columns.
TEMPLATE_CLASSES = ("GALAXY", "QSO", "STAR")
#: The anomaly statistic the runtime flags against its p99 (omnispectra.api.anomaly_statistic).
from omnispectra.flags import ANOMALY_STATISTIC  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def anomaly_statistic(spectra: list, encoder: Any) -> np.ndarray:
    """The runtime's anomaly statistic of each spectrum (:func:`omnispectra.api.anomaly_statistic`,
    named :data:`omnispectra.flags.ANOMALY_STATISTIC`), with its defaults."""
    from omnispectra.api import anomaly_statistic as statistic

    values, _ids = statistic(spectra, model=encoder, progress=False)
    return np.asarray(values, dtype=np.float64)


# ---------------------------------------------------------------------------------------
# probes


def make_probe(task, dim, recipe, encoder_desc=None):
    from omnispectra.probes import Probe

    names = task.classes if task.kind == "classification" else task.targets
    return Probe(dim, task.kind, names, head=recipe["head"], hidden=recipe.get("hidden", ()),
                 dropout=recipe.get("dropout", 0.0), members=recipe.get("members", 1),
                 transforms=task.transforms, units=task.units, encoder=encoder_desc)


def train_probe(task, emb, y, recipe, seed=0, encoder_desc=None, steps_scale=1.0):
    import torch

    from omnispectra.training.probe_module import fit_probe_on_embeddings

    torch.manual_seed(seed)
    probe = make_probe(task, emb.shape[1], recipe, encoder_desc)
    steps = max(1, int(round(recipe["steps"] * steps_scale)))
    return fit_probe_on_embeddings(probe, emb, y, seed=seed, batch_size=64, steps=steps, lr=recipe["lr"],
                                   loss=recipe.get("loss", "mse"))


def member_outputs(probe, emb) -> np.ndarray:
    """``(members, N, outputs)``: logits, or each member's prediction in the fitted space."""
    import torch

    from omnispectra.probes import HeadEnsemble

    heads = list(probe.head.members) if isinstance(probe.head, HeadEnsemble) else [probe.head]
    x = torch.as_tensor(np.asarray(emb, dtype=np.float32))
    probe.eval()
    with torch.no_grad():
        raw = np.stack([h(x).numpy().astype(np.float64) for h in heads])
    return raw if probe.kind == "classification" else raw * (probe.std + 1e-8) + probe.mean


# ---------------------------------------------------------------------------------------
# cross-validation


def cv_rounds(folds: np.ndarray, k: int) -> list[dict[str, np.ndarray]]:
    """Row positions ``train``/``calibration``/``evaluation`` of each round."""
    out = []
    for r in range(k):
        cal = (r + 1) % k
        out.append({"evaluation": np.flatnonzero(folds == r), "calibration": np.flatnonzero(folds == cal),
                    "train": np.flatnonzero((folds != r) & (folds != cal))})
    return out


def with_engine(recipe, emb, y, engine):
    """Training arrays of ``recipe``: the real rows, plus the engine rows when the recipe asks."""
    if not recipe.get("engine") or engine is None:
        return emb, y
    return np.concatenate([emb, engine[0]]), np.concatenate([y, engine[1]])


def run_cv(task, emb, y, rounds, candidates, seed, steps_scale, engine=None):
    """Outputs of every candidate on every round's calibration and evaluation folds.

    ``engine`` (embeddings, targets) of engine spectra join the training folds of recipes
    with ``"engine": True``; they are never calibration or evaluation rows.

    Returns ``{name: [{"calibration": (M, n, T), "evaluation": (M, n, T)} per round]}``
    (``M`` members; logits for classes, fitted-space predictions for regression).
    """
    out: dict[str, list] = {}
    for recipe in candidates:
        per_round = []
        for r, idx in enumerate(rounds):
            t0 = time.perf_counter()
            x_train, y_train = with_engine(recipe, emb[idx["train"]], y[idx["train"]], engine)
            probe = train_probe(task, x_train, y_train, recipe, seed=seed + 100 * r, steps_scale=steps_scale)
            per_round.append({side: member_outputs(probe, emb[idx[side]])
                              for side in ("calibration", "evaluation")})
            log(f"{task.name}: round {r} {recipe['name']} ({time.perf_counter() - t0:.0f} s)")
        out[recipe["name"]] = per_round
    return out


def pooled(rounds, side: str) -> np.ndarray:
    return np.concatenate([idx[side] for idx in rounds])


def interval(k: int, n: int) -> dict[str, Any]:
    from omnispectra.evaluation.stats import wilson_interval

    lo, hi = wilson_interval(int(k), int(n))
    return {"value": (k / n) if n else float("nan"), "k": int(k), "n": int(n), "wilson95": [lo, hi]}


def recall_report(y, pred, classes) -> dict[str, Any]:
    """Per-class recall (k, N, Wilson 95%), macro recall over present classes, accuracy."""
    per = {c: interval(((pred == k) & (y == k)).sum(), (y == k).sum()) for k, c in enumerate(classes)}
    present = [v["value"] for v in per.values() if v["n"]]
    return {"recall": per, "macro_recall": float(np.mean(present)) if present else float("nan"),
            "accuracy": interval((pred == y).sum(), y.size)}


def calibration_report(prob, y) -> dict[str, Any]:
    from omnispectra.evaluation import calibration as cal

    right, n_sure = cal.confident_accuracy(prob, y, CONFIDENT)
    return {"n": int(y.size), f"ece_{ECE_BINS}_bins": cal.expected_calibration_error(prob, y, ECE_BINS),
            "brier": cal.brier_score(prob, y), f"accuracy_p_ge_{CONFIDENT}": interval(right, n_sure)}


def class_candidates(engine) -> list[dict[str, Any]]:
    """The class recipes; with engine spectra each is also tried with them in its training folds."""
    if engine is None:
        return CANDIDATES["source_class"]
    return CANDIDATES["source_class"] + [r | {"name": r["name"] + " + engine spectra", "engine": True}
                                         for r in CANDIDATES["source_class"]]


def class_scores(task, prob, yy, ss, flags=None, prob_raw=None) -> dict[str, Any]:
    """Recall (all rows, the macro groups, each group and survey) and calibration of class
    probabilities ``prob`` of rows with labels ``yy`` and surveys ``ss``; with ``flags``
    also the accuracy of confident flag-0 rows; with ``prob_raw`` the uncalibrated scores."""
    from omnispectra.evaluation import calibration as cal

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
    if flags is not None:  # what a user keeps: confident rows without an input warning
        clean = survey_mask & (flags == 0)
        right, n_sure = cal.confident_accuracy(prob[clean], yy[clean], CONFIDENT)
        report["calibration"]["flag0"] = {
            "rows": "survey spectra of the evaluation folds whose input flags (OUTSIDE_SUPPORT, FEW_TOKENS, "
                    "LOW_SN) are 0; the ANOMALY bit is not evaluated here",
            "n": int(clean.sum()), "share_of_survey_rows": float(clean.sum() / max(survey_mask.sum(), 1)),
            f"accuracy_p_ge_{CONFIDENT}": interval(right, n_sure)}
    return report


def classification_cv(task, emb, y, surveys, rounds, seed, steps_scale, figures: Path | None, engine=None,
                      flags=None):
    from omnispectra.evaluation import calibration as cal

    outs = run_cv(task, emb, y, rounds, class_candidates(engine), seed, steps_scale, engine)
    cal_rows, ev_rows = pooled(rounds, "calibration"), pooled(rounds, "evaluation")
    choice = {}
    for name, per_round in outs.items():
        logits = np.concatenate([o["calibration"].mean(0) for o in per_round])
        choice[name] = recall_report(y[cal_rows], logits.argmax(1), task.classes)["macro_recall"]
    best = max(choice, key=choice.get)
    per_round = outs[best]
    # temperatures are fitted on survey spectra only: the many easy library stars would
    # pull T towards their own (over-)confidence
    temps = []
    for o, idx in zip(per_round, rounds, strict=True):
        fit_rows = ~np.isin(surveys[idx["calibration"]], LIBRARIES)
        temps.append(cal.fit_temperature(o["calibration"].mean(0)[fit_rows], y[idx["calibration"]][fit_rows]))
    logits_ev = np.concatenate([o["evaluation"].mean(0) for o in per_round])
    prob_raw = cal.softmax(logits_ev)
    prob = np.concatenate([cal.softmax(o["evaluation"].mean(0), t) for o, t in zip(per_round, temps,
                                                                                     strict=True)])
    report = {
        "selection": {"metric": "macro recall on the pooled calibration folds", "scores": choice,
                      "chosen": best},
        "temperature_per_round": temps,
        **class_scores(task, prob, y[ev_rows], surveys[ev_rows], None if flags is None else flags[ev_rows],
                       prob_raw),
    }
    cal_logits = np.concatenate([o["calibration"].mean(0) for o in per_round])
    fit_rows = ~np.isin(surveys[cal_rows], LIBRARIES)
    final_t = cal.fit_temperature(cal_logits[fit_rows], y[cal_rows][fit_rows])
    if figures is not None:
        yy, survey_mask = y[ev_rows], ~np.isin(surveys[ev_rows], LIBRARIES)
        ece = {k: report["calibration"][k][f"ece_{ECE_BINS}_bins"]
               for k in ("uncalibrated", "temperature_scaled")}
        report["reliability_diagram"] = reliability_figure(
            {f"T = 1 (ECE {ece['uncalibrated']:.3f})": (prob_raw[survey_mask], yy[survey_mask]),
             f"T per round (ECE {ece['temperature_scaled']:.3f})": (prob[survey_mask], yy[survey_mask])},
            f"source class, survey spectra, N = {survey_mask.sum()}",
            figures / "reliability-source-class.png")
    return best, report, {"temperature": final_t,
                          "fold": (f"fitted on the pooled calibration-fold logits of the {len(rounds)} "
                                   "grouped cross-validation probes (each trained on other folds), "
                                   f"survey spectra only (libraries {list(LIBRARIES)} left out)"),
                          "n": int(fit_rows.sum())}, (ev_rows, prob)


def reliability_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, path: Path) -> str:
    """Write the reliability diagram of ``{label: (probabilities, labels)}`` to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from omnispectra.evaluation import calibration as cal
    from omnispectra.fileio import atomic_write

    fig = cal.plot_reliability({k: cal.reliability_curve(p, y, ECE_BINS) for k, (p, y) in curves.items()},
                               title=title)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return str(path)


def template_class_chi2(data, rows, templates: str, cache: Path | None, key: str) -> np.ndarray:
    """``(N, 3)`` chi-square of the best GALAXY, QSO and STAR template solution of each row
    (NaN where a class was not fitted), from one :class:`omnispectra.redshift.RedshiftFitter` fit."""
    from omnispectra.redshift import RedshiftFitter

    path = None if cache is None else cache / f"template-chi2-{key}.npy"
    if path is not None and path.is_file():
        log(f"template fits from {path}")
        return np.load(path)
    fitter = RedshiftFitter(directory=templates)
    out = np.full((len(rows), len(TEMPLATE_CLASSES)), np.nan)
    t0 = time.perf_counter()
    for i, r in enumerate(rows):
        chi2 = fitter.fit(data.dataset.spectrum(int(data.positions[int(r)]))).class_chi2
        out[i] = [chi2.get(c, np.nan) for c in TEMPLATE_CLASSES]
        if i % 200 == 199:
            log(f"template fits: {i + 1}/{len(rows)} ({time.perf_counter() - t0:.0f} s)")
    if path is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.save(path, out)
    return out


def template_combination_cv(task, prob, class_chi2, y, surveys, folds, flags, figures: Path | None):
    """Cross-validate the network + template class (:mod:`omnispectra.class_evidence`).

    ``prob`` are out-of-fold calibrated probe probabilities (each row's from the probe of
    the round that evaluated it). Round ``r`` fits the combination on the rows of the
    other folds (survey spectra only, as the temperature) and scores fold ``r``; the
    shipped combination is fitted on all survey rows.
    """
    from omnispectra.class_evidence import combine, template_evidence
    from omnispectra.evaluation.calibration import expected_calibration_error, fit_template_combination

    chi2 = [dict(zip(TEMPLATE_CLASSES, row, strict=True)) for row in class_chi2]
    evidence = template_evidence(chi2, task.classes)
    survey = ~np.isin(surveys, LIBRARIES)
    combined = np.empty_like(prob)
    per_round = []
    for r in np.unique(folds):
        fit_rows = (folds != r) & survey
        params = fit_template_combination(prob[fit_rows], evidence[fit_rows], y[fit_rows], task.classes)
        per_round.append(params)
        combined[folds == r] = combine(prob[folds == r], evidence[folds == r], params)
    report = {"per_round": per_round, "rows_without_template_fit": int((~np.isfinite(evidence).all(1)).sum()),
              **class_scores(task, combined, y, surveys, flags)}
    if figures is not None:
        ece = {name: expected_calibration_error(p[survey], y[survey], ECE_BINS)
               for name, p in (("network", prob), ("combined", combined))}
        report["reliability_diagram"] = reliability_figure(
            {f"network (ECE {ece['network']:.3f})": (prob[survey], y[survey]),
             f"network + templates (ECE {ece['combined']:.3f})": (combined[survey], y[survey])},
            f"source class, survey spectra, N = {survey.sum()}",
            figures / "reliability-source-class-templates.png")
    final = fit_template_combination(prob[survey], evidence[survey], y[survey], task.classes)
    final["fold"] = ("fitted on the out-of-fold calibrated probabilities of the grouped cross-validation "
                     f"probes and one template fit per row, survey spectra only (libraries {list(LIBRARIES)} "
                     "left out)")
    return report, final


def regression_cv(task, emb, y, rounds, seed, steps_scale, baseline_x=None):
    from omnispectra.evaluation import baselines
    from omnispectra.evaluation import calibration as cal
    from omnispectra.evaluation.harness import regression_metrics, transform_targets
    from omnispectra.probes import ensemble_spread, fit_normalization

    outs = run_cv(task, emb, y, rounds, CANDIDATES[task.name], seed, steps_scale)
    yt = transform_targets(task, y)
    cal_rows, ev_rows = pooled(rounds, "calibration"), pooled(rounds, "evaluation")
    mean, std = fit_normalization(yt)          # only scales the reported normalized MSE

    def metrics(rows, pred):
        return regression_metrics(yt[rows], pred, task.targets, mean, std, task.transforms)

    choice = {name: metrics(cal_rows, np.concatenate([o["calibration"].mean(0) for o in outs_r]))["mse_norm"]
              for name, outs_r in outs.items()}
    best = min(choice, key=choice.get)
    per_round = outs[best]
    ev_pred = np.concatenate([o["evaluation"].mean(0) for o in per_round])
    scores = {"omnispectra_probe": metrics(ev_rows, ev_pred)}
    trivial, ridge, knn = [], [], []
    for idx in rounds:
        tr, ev = idx["train"], idx["evaluation"]
        trivial.append(baselines.trivial_predict(yt[tr], ev.size, task.kind))
        if baseline_x is not None:
            ridge.append(baselines.pca_ridge(baseline_x[tr], yt[tr], baseline_x[ev]))
            knn.append(baselines.knn_pca(baseline_x[tr], yt[tr], baseline_x[ev]))
    scores["trivial"] = metrics(ev_rows, np.concatenate(trivial))
    if baseline_x is not None:
        scores["pca_ridge"] = metrics(ev_rows, np.concatenate(ridge))
        scores["knn_pca"] = metrics(ev_rows, np.concatenate(knn))
    report: dict[str, Any] = {
        "selection": {"metric": "normalized MSE on the pooled calibration folds", "scores": choice,
                      "chosen": best},
        "scores": scores, "n": int(ev_rows.size),
    }
    calibration = None
    if per_round[0]["evaluation"].shape[0] > 1:
        scales = [cal.fit_sigma_scale(o["calibration"].mean(0) - yt[rows], ensemble_spread(o["calibration"]))
                  for o, rows in zip(per_round, (idx["calibration"] for idx in rounds), strict=True)]
        sigma_ev = np.concatenate([s * ensemble_spread(o["evaluation"])
                                   for s, o in zip(scales, per_round, strict=True)])
        cover = cal.interval_coverage(ev_pred - yt[ev_rows], sigma_ev)
        ok = np.isfinite(ev_pred - yt[ev_rows])
        report["uncertainty"] = {
            "definition": ("sigma = sigma_scale * std over members (ddof 1) of the members' predictions "
                           "in the fitted space (" + ", ".join(
                               f"{'log10 ' if task.transforms.get(t) == 'log10' else ''}{t}"
                               for t in task.targets) + ")"),
            "sigma_scale_per_round": [s.tolist() for s in scales],
            "coverage_1sigma": {t: interval(int(round(cover[k] * ok[:, k].sum())), int(ok[:, k].sum()))
                                for k, t in enumerate(task.targets)},
            "median_sigma": {t: float(np.median(sigma_ev[ok[:, k], k])) for k, t in enumerate(task.targets)},
        }
        cal_pred = np.concatenate([o["calibration"] for o in per_round], axis=1)
        final_scale = cal.fit_sigma_scale(cal_pred.mean(0) - yt[cal_rows], ensemble_spread(cal_pred))
        calibration = {"sigma_scale": [float(v) for v in final_scale],
                       "coverage_1sigma": [float(v) for v in cover],
                       "spread": report["uncertainty"]["definition"],
                       "fold": (f"sigma_scale fitted on the pooled calibration-fold predictions of the "
                                f"{len(rounds)} grouped cross-validation ensembles (each trained on other "
                                "folds); coverage_1sigma on their evaluation folds with per-round scales"),
                       "n": int(cal_rows.size)}
    return best, report, calibration


# ---------------------------------------------------------------------------------------
# the script


def cached_embeddings(cache: Path | None, key: str, compute) -> np.ndarray:
    if cache is not None:
        path = cache / f"embeddings-{key}.npy"
        if path.is_file():
            log(f"embeddings from {path}")
            return np.load(path)
    emb = compute()
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.save(path, emb)
    return emb


def anomaly_threshold(corpus, encoder, exclude, cache: Path | None, key: str) -> dict[str, Any]:
    """The p99 of :func:`anomaly_statistic` over validation-side real spectra, pooled."""
    from omnispectra.dataset import SpectrumDataset
    from omnispectra.splits import DEFAULT_SEED, DEFAULT_VALIDATION_FRACTION, is_validation

    ds = SpectrumDataset(corpus, return_index=False)
    surveys = np.asarray(ds.column("survey"), dtype=str)
    val = is_validation(ds.column("object_id"), DEFAULT_VALIDATION_FRACTION, DEFAULT_SEED)
    rows = np.flatnonzero(val & ~np.isin(surveys, exclude))
    path = None if cache is None else cache / f"anomaly-{ANOMALY_STATISTIC}-{key}.npy"
    if path is not None and path.is_file():
        scores = np.load(path)
    else:
        t0 = time.perf_counter()
        scores = anomaly_statistic([ds.spectrum(int(i)) for i in rows], encoder)
        log(f"anomaly: {rows.size} validation spectra scored in {time.perf_counter() - t0:.0f} s")
        if path is not None:
            np.save(path, scores)
    ok = np.isfinite(scores)
    p99 = float(np.percentile(scores[ok], 99))
    per = {s: {"n": int((ok & (surveys[rows] == s)).sum()),
               "median": float(np.median(scores[ok & (surveys[rows] == s)])),
               "n_above_p99": int((scores[ok & (surveys[rows] == s)] > p99).sum())}
           for s in sorted(set(surveys[rows][ok].tolist()))}
    return {"statistic": ANOMALY_STATISTIC, "p99": p99, "n_validation": int(ok.sum()),
            "split": (f"omnispectra.splits.is_validation(fraction={DEFAULT_VALIDATION_FRACTION}, "
                      f"seed={DEFAULT_SEED}); all surveys pooled; excluded {list(exclude)}"),
            "per_survey": per}


def engine_embeddings(files, n: int, encoder, classes, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and class indices of ``n`` engine spectra drawn (seeded) from corpus ``files``."""
    from omnispectra.api import embed
    from omnispectra.dataset import SpectrumDataset

    ds = SpectrumDataset(list(files), return_index=False)
    labels = np.asarray(ds.column("class"), dtype=str)
    usable = np.flatnonzero(np.isin(labels, classes))
    rows = np.sort(np.random.default_rng(seed).choice(usable, min(n, usable.size), replace=False))
    emb = embed((ds[int(i)].tokens for i in rows), model=encoder, batch_size=32, progress=False)
    lookup = {c: k for k, c in enumerate(classes)}
    targets = np.array([lookup[c] for c in labels[rows]])
    return np.asarray(emb, dtype=np.float32).reshape(rows.size, -1), targets


def input_flag_values(data, rows, encoder) -> np.ndarray:
    """The input bits (OUTSIDE_SUPPORT, FEW_TOKENS, LOW_SN) the runtime would set on each row."""
    from omnispectra.flags import input_flags
    from omnispectra.inference.inputs import measure_input
    from omnispectra.runtime import wavelength_support

    support = wavelength_support(encoder)
    quality = []
    for r in rows:
        position = int(data.positions[int(r)])
        spectrum, tokens = data.dataset.spectrum(position), data.dataset[position].tokens
        quality.append(measure_input(spectrum, tokens, support)[0])
    return input_flags(quality)


def training_support(data, rows) -> dict[str, Any]:
    """Wavelength support of a probe's labelled spectra (valid pixels, per survey and
    overall), in the format :func:`omnispectra.flags.probe_support_flags` reads."""
    return data.dataset.wavelength_ranges(data.positions[np.asarray(rows, dtype=np.int64)])


def engine_holdout_report(probe, engine_holdout, classes) -> dict[str, Any]:
    """Recall and calibration of the shipped class probe on held-out engine spectra."""
    from omnispectra.evaluation import calibration as cal

    x, y = engine_holdout
    prob = cal.softmax(member_outputs(probe, x).mean(0), probe.temperature)
    return {"rows": "engine spectra not used in training (a different draw of the engine corpus)",
            **recall_report(y, prob.argmax(1), classes), "calibration": calibration_report(prob, y)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", help="encoder weights file (safetensors) or model name")
    parser.add_argument("corpus", nargs="+", help="corpus HDF5 files")
    parser.add_argument("-o", "--output", default="omnispectra/data", help="output directory")
    parser.add_argument("--folds", type=int, default=5, help="K of the grouped K-fold")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold hash and of the training")
    parser.add_argument("--tasks", default="source_class,stellar_params,redshift")
    parser.add_argument("--exclude-surveys", default="unknown",
                        help="comma-separated surveys never used (templates, not observations)")
    parser.add_argument("--baseline-pixels", type=int, default=2048)
    parser.add_argument("--steps-scale", type=float, default=1.0,
                        help="multiply every recipe's steps (quick runs while developing)")
    parser.add_argument("--figures", default="benchmarks/results", help="directory of the PNG figures")
    parser.add_argument("--card", default=None,
                        help="encoder card to update (default <output>/omnispectra-default.json if present)")
    parser.add_argument("--no-anomaly", action="store_true", help="skip the anomaly threshold")
    parser.add_argument("--cache", default=None, help="directory caching embeddings and anomaly scores")
    parser.add_argument("--engine", nargs="*", default=[],
                        help="engine corpus files (omnispectra simulate): class recipes are also tried with "
                             "engine spectra in their training folds, and the shipped class probe is "
                             "checked on an engine hold-out")
    parser.add_argument("--templates", default=None,
                        help="template folder (holding redrock/): also fit and ship the network + template "
                             "class combination (omnispectra.class_evidence)")
    parser.add_argument("--engine-train", type=int, default=10000, help="engine spectra for training")
    parser.add_argument("--engine-holdout", type=int, default=5000, help="engine spectra held out")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", ".*does not have many workers.*")

    from omnispectra.class_evidence import COMBINATION_KEY
    from omnispectra.evaluation import baselines
    from omnispectra.evaluation.harness import (
        TASKS,
        compute_embeddings,
        labeled_rows,
        load_labeled,
        task_targets,
    )
    from omnispectra.probes import encoder_description, save_probe
    from omnispectra.runtime import resolve_model
    from omnispectra.splits import fold_of

    t0 = time.perf_counter()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache) if args.cache else None
    figures = Path(args.figures) if args.figures else None
    exclude = [s for s in args.exclude_surveys.split(",") if s]
    tasks = [TASKS[t] for t in args.tasks.split(",")]
    encoder = resolve_model(args.weights, "cpu")
    desc = encoder_description(encoder)
    bundled = Path(args.weights).name == "omnispectra-default.safetensors"
    desc["name"] = "default" if bundled else str(args.weights)
    log(f"encoder {desc['name']} D={encoder.config.dim}, sha256(tensors) {desc['sha256'][:12]}")
    data = load_labeled(args.corpus, tasks, max_per_dataset=10**9)
    ids = "|".join(map(str, data.meta["id"]))
    key = hashlib.sha256(f"{desc['sha256']}|{ids}".encode()).hexdigest()[:16]
    emb = cached_embeddings(cache, key, lambda: compute_embeddings(data, encoder, batch_size=32))
    log(f"{len(data)} labelled spectra embedded ({time.perf_counter() - t0:.0f} s)")
    keep = ~np.isin(data.meta["survey"], exclude)

    report: dict[str, Any] = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python scripts/train_predictors.py " + " ".join(argv or sys.argv[1:]),
        "encoder": desc, "excluded_surveys": exclude,
        "cross_validation": {"k": args.folds, "seed": args.seed,
                             "folds": "omnispectra.splits.fold_of: floor(object_hash(object_id, seed) * k)",
                             "rounds": "round r: evaluate fold r, calibrate and choose on fold r+1 mod k, "
                                       "train on the rest; scores pooled over rounds"},
        "steps_scale": args.steps_scale, "predictors": {},
    }
    for task in tasks:
        rows = np.flatnonzero(labeled_rows(task, data.meta) & keep)
        if task.name == "stellar_params":
            rows = rows[data.meta["survey"][rows] == "miles"]
        if rows.size < 10 * args.folds:
            log(f"{task.name}: only {rows.size} labelled spectra; skipped")
            continue
        y = task_targets(task, data.meta, rows)
        surv = data.meta["survey"][rows]
        folds = fold_of(data.meta["object_id"][rows], args.folds, args.seed)
        rounds = cv_rounds(folds, args.folds)
        entry: dict[str, Any] = {
            "file": FILES[task.name], "n_labelled": int(rows.size),
            "surveys": {s: int((surv == s).sum()) for s in sorted(set(surv.tolist()))},
            "fold_sizes": np.bincount(folds, minlength=args.folds).tolist(),
        }
        calibration = None
        engine = holdout = None
        if task.kind == "classification" and args.engine:
            x_eng, y_eng = engine_embeddings(args.engine, args.engine_train + args.engine_holdout, encoder,
                                             task.classes, args.seed)
            engine, holdout = (x_eng[:args.engine_train], y_eng[:args.engine_train]), \
                (x_eng[args.engine_train:], y_eng[args.engine_train:])
            log(f"{task.name}: {len(x_eng)} engine spectra embedded ({time.perf_counter() - t0:.0f} s)")
        if task.kind == "classification":
            entry["class_counts"] = {c: int((y == k).sum()) for k, c in enumerate(task.classes)}
            flags = input_flag_values(data, rows, encoder)
            best, cv, calibration, (ev_rows, prob_ev) = classification_cv(
                task, emb[rows], y, surv, rounds, args.seed, args.steps_scale, figures, engine, flags)
            if args.templates:
                prob_oof = np.empty_like(prob_ev)
                prob_oof[ev_rows] = prob_ev
                chi2 = template_class_chi2(data, rows, args.templates, cache, key)
                cv["with_templates"], calibration[COMBINATION_KEY] = template_combination_cv(
                    task, prob_oof, chi2, y, surv, folds, flags, figures)
                log(f"{task.name}: network + templates macro recall "
                    f"{cv['with_templates']['macro_surveys']['macro_recall']:.3f}; ECE survey spectra "
                    f"{cv['with_templates']['calibration']['temperature_scaled'][f'ece_{ECE_BINS}_bins']:.3f}")
            log(f"{task.name}: macro recall (SDSS/BOSS/eBOSS, LAMOST, DESI, MILES) "
                f"{cv['macro_surveys']['macro_recall']:.3f}; ECE survey spectra "
                f"{cv['calibration']['uncalibrated'][f'ece_{ECE_BINS}_bins']:.3f} -> "
                f"{cv['calibration']['temperature_scaled'][f'ece_{ECE_BINS}_bins']:.3f}; "
                f"final T {calibration['temperature']:.3f}")
        else:
            x = None
            if task.name == "stellar_params":
                x, _ = baselines.resample_group(data.arrays(rows), max_pixels=args.baseline_pixels)
            best, cv, calibration = regression_cv(task, emb[rows], y, rounds, args.seed, args.steps_scale, x)
            log(f"{task.name}: " + "; ".join(
                f"{m}: " + ", ".join(f"{k}={v:.3g}" for k, v in s.items() if k.startswith("mae_"))
                for m, s in cv["scores"].items()))
            if "uncertainty" in cv:
                log(f"{task.name}: +-1 sigma coverage " + ", ".join(
                    f"{t}={v['value']:.3f}" for t, v in cv["uncertainty"]["coverage_1sigma"].items()))
        candidates = class_candidates(engine) if task.kind == "classification" else CANDIDATES[task.name]
        recipe = next(r for r in candidates if r["name"] == best)
        entry.update({"recipe": recipe, "cross_validated": cv, "calibration": calibration})
        ship = True
        if task.name == "redshift":
            ship = cv["scores"]["omnispectra_probe"]["mse_norm"] < cv["scores"]["trivial"]["mse_norm"]
            entry["shipped"] = bool(ship)
        target = out / FILES[task.name]
        if ship:
            x_final, y_final = with_engine(recipe, emb[rows], y, engine)
            final = train_probe(task, x_final, y_final, recipe, seed=args.seed, encoder_desc=desc,
                                steps_scale=args.steps_scale)
            final.calibration = calibration or {}
            if holdout is not None and len(holdout[0]):
                entry["engine_holdout"] = engine_holdout_report(final, holdout, task.classes)
                log(f"{task.name}: engine hold-out ({len(holdout[0])}) accuracy "
                    f"{entry['engine_holdout']['accuracy']['value']:.3f}, ECE "
                    f"{entry['engine_holdout']['calibration'][f'ece_{ECE_BINS}_bins']:.3f}")
            final.info = {"name": task.name, "recipe": recipe, "n_train": int(len(y_final)),
                          "cross_validation": f"grouped {args.folds}-fold; details in predictors.json",
                          "created": report["created"], "wavelength_support": training_support(data, rows)}
            save_probe(final, target)
            log(f"{task.name}: wrote {target}")
        else:
            log(f"{task.name}: does not beat the training mean in cross-validation; not shipped")
            for p in (target, target.with_suffix(".json")):
                if p.exists():
                    p.unlink()
        report["predictors"][task.name] = entry
    if not args.no_anomaly:
        report["anomaly"] = anomaly_threshold(args.corpus, encoder, exclude, cache, key)
        log(f"anomaly: p99 {report['anomaly']['p99']:.4g} over {report['anomaly']['n_validation']} spectra")
    report["seconds"] = round(time.perf_counter() - t0, 1)
    keep_previous(report, out / "predictors.json")
    (out / "predictors.json").write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
    log(f"wrote {out / 'predictors.json'} in {report['seconds']} s")
    card = Path(args.card) if args.card else out / "omnispectra-default.json"
    if card.is_file():
        update_card(card, report)
        log(f"updated {card}")
    return 0


def keep_previous(report: dict, path: Path) -> None:
    """Keep the entries of ``path`` (an earlier ``predictors.json`` of the *same* encoder)
    that this run did not redo (other ``--tasks``, the anomaly threshold with
    ``--no-anomaly``), each marked with the command and date that made it."""
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


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer,)):
        return int(value)
    return float(value)


def update_card(card_path: Path, report: dict) -> None:
    """Write the anomaly threshold and a summary of the cross-validated scores into the encoder card."""
    card = json.loads(card_path.read_text())
    summary: dict[str, Any] = {"details": "predictors.json", "cross_validation": report["cross_validation"]}
    for name, entry in report["predictors"].items():
        cv = entry["cross_validated"]
        item: dict[str, Any] = {"file": entry["file"] if entry.get("shipped", True) else None,
                                "recipe": entry["recipe"]["name"], "n": entry["n_labelled"],
                                "calibration": entry.get("calibration")}
        if "macro_surveys" in cv:
            item["macro_recall"] = cv["macro_surveys"]["macro_recall"]
            item["recall"] = cv["all"]["recall"]
            item["calibration_scores"] = cv["calibration"]["temperature_scaled"]
            if "with_templates" in cv:
                joined = cv["with_templates"]
                item["with_templates"] = {"macro_recall": joined["macro_surveys"]["macro_recall"],
                                          "recall": joined["all"]["recall"],
                                          "calibration_scores": joined["calibration"]["temperature_scaled"]}
        else:
            item["scores"] = {m: {k: v for k, v in s.items() if k.startswith(("mae_", "mse_norm"))}
                              for m, s in cv["scores"].items()}
        summary[name] = item
    card["predictors"] = summary
    if "anomaly" in report:
        card["anomaly"] = {k: report["anomaly"][k] for k in ("statistic", "p99", "n_validation")}
    card_path.write_text(json.dumps(card, indent=2, default=_json_default) + "\n")


if __name__ == "__main__":
    sys.exit(main())
