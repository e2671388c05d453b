"""Train, cross-validate and calibrate the predictors shipped with omnispectra.

:func:`train_predictors` (``omnispectra train-predictors``) writes into its output folder
``probe-source-class.safetensors`` (with its temperature and, with templates, its template
combination), ``probe-stellar-params.safetensors`` (an ensemble with its ``sigma_scale``)
and, only when it beats the training mean in cross-validation, ``probe-redshift.safetensors``
(each with a ``.json`` card), plus ``predictors.json`` with everything measured; into the
encoder card the anomaly threshold and a summary of the scores; into ``figures`` the
reliability diagram of the class probabilities. Run on a subset of tasks (or without the
anomaly threshold), it keeps the other entries of an existing ``predictors.json`` of the
same encoder, each marked ``kept_from``.

Labels (:mod:`omnispectra.evaluation.harness`): source class GALAXY/QSO/STAR across
surveys; stellar parameters Teff (fitted as log10 Teff), logg, [Fe/H] of the MILES stars;
redshift of GALAXY and QSO spectra with a ``z`` label. The protocol is that of
:mod:`omnispectra.training.predictors.crossval`, grouped by object id or, with a
source-group file (``--groups configs/source_groups.csv``,
:mod:`omnispectra.training.predictors.sources`), by whole sources: then the class recipe is
chosen by its worst source group and every score is reported per source group. Plus:

- **Class calibration** on survey spectra only (the spectral libraries
  :data:`~omnispectra.training.predictors.reports.LIBRARIES` are too easy and would make
  the calibration error trivially small); ECE, Brier score and confident accuracy before
  and after scaling; recall per class and survey with Wilson intervals. With templates,
  every labelled spectrum is also fitted once by :class:`omnispectra.redshift.RedshiftFitter`
  and the network + template class (:mod:`omnispectra.class_evidence`) is cross-validated
  and shipped in the class probe's ``calibration``.
- **Stellar parameters**: ensembles; ``sigma_scale`` per output makes +-1 sigma hold 68.3%
  of a round's calibration fold; MAE and coverage next to PCA + ridge and kNN in PCA space.
- **Anomaly threshold**: the 99th percentile of the runtime's anomaly statistic
  (:func:`omnispectra.api.anomaly_statistic`, named :data:`omnispectra.flags.ANOMALY_STATISTIC`)
  over the validation side of the project's split (:func:`omnispectra.splits.is_validation`,
  fraction 0.2, seed 0) of every real spectrum, all surveys pooled
  (:func:`measure_anomaly_threshold`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...exceptions import ConfigError
from ...pretrained import file_sha256, templates_meta
from ...probes import PROBE_FILES
from .crossval import (
    ECE_BINS,
    MIN_GROUP_ROWS,
    calibrate_classes,
    calibrate_spread,
    choose_recipe,
    cv_rounds,
    fitted_member_outputs,
    fitted_targets,
    interval,
    pooled,
    recall_report,
    run_cv,
    side_means,
    train_recipe,
    with_engine,
)
from .recipes import Recipe, load_recipes
from .reports import (
    LIBRARIES,
    TEMPLATE_CLASSES,
    calibration_report,
    class_scores,
    keep_previous,
    regression_baselines,
    reliability_figure,
    template_combination_cv,
    to_json,
    update_card,
)

__all__ = ["PredictorOptions", "train_predictors", "class_candidates", "classification_cv", "regression_cv",
           "anomaly_statistic_values", "measure_anomaly_threshold", "cached_array", "task_rows"]

logger = logging.getLogger(__name__)

#: Fewest labelled rows per fold for a task to be trained.
MIN_ROWS_PER_FOLD = 10


@dataclass
class PredictorOptions:
    """Settings of :func:`train_predictors` (the options of ``omnispectra train-predictors``).

    Parameters
    ----------
    weights : str
        Encoder weights file or model name.
    corpus : list of str
        Corpus HDF5 files of labelled real spectra.
    recipes : str
        Recipe YAML (:func:`~omnispectra.training.predictors.load_recipes`), e.g.
        ``configs/predictor_recipes.yaml``.
    output : str
        Output folder of the probes and ``predictors.json``.
    folds, seed : int
        K of the grouped K-fold; seed of the fold hash and of the training.
    tasks : list of str
        Tasks to train (keys of :data:`omnispectra.evaluation.harness.TASKS`).
    exclude_surveys : list of str
        Surveys never used (templates, not observations).
    baseline_pixels : int
        Pixels of the resampled fluxes of the stellar baselines.
    steps_scale : float
        Factor on every recipe's steps (quick runs while developing).
    figures : str, optional
        Folder of the PNG figures (None: no figures).
    card : str, optional
        Encoder card to update (default ``<output>/omnispectra-default.json`` when present).
    anomaly : bool
        Measure the anomaly threshold.
    cache : str, optional
        Folder caching embeddings, template fits and anomaly statistics.
    engine : list of str
        Engine corpus files: class recipes are also tried with engine spectra in their
        training folds, and the shipped class probe is checked on an engine hold-out.
    templates : str, optional
        Template folder (holding ``redrock/``): also fit and ship the network + template class.
    engine_train, engine_holdout : int
        Engine spectra for training and held out.
    command : str
        The command line recorded in ``predictors.json``.
    groups : str, optional
        Source-group file (:func:`~omnispectra.training.predictors.sources.load_source_groups`):
        folds hold whole sources (tasks whose rows span fewer sources than folds are
        grouped by object, and say so in ``predictors.json``).
    fold_probes : bool
        Also write each round's class probe (the chosen recipe with that round's
        temperature and template combination) and the round's rows into
        ``<output>/folds/`` for out-of-fold evaluation through the real pipeline
        (``benchmarks/source_validation.py``).
    balance_groups : bool
        Fit the network + template combination with every source group weighing the same
        (:func:`~omnispectra.evaluation.calibration.fit_template_combination` ``groups``;
        needs ``groups``). Off: every row weighs the same (the shipped probe's fit).
    """

    weights: str
    corpus: list[str]
    recipes: str
    output: str = "omnispectra/data"
    folds: int = 5
    seed: int = 0
    tasks: list[str] = field(default_factory=lambda: ["source_class", "stellar_params", "redshift"])
    exclude_surveys: list[str] = field(default_factory=lambda: ["unknown"])
    baseline_pixels: int = 2048
    steps_scale: float = 1.0
    figures: str | None = "benchmarks/results"
    card: str | None = None
    anomaly: bool = True
    cache: str | None = None
    engine: list[str] = field(default_factory=list)
    templates: str | None = None
    engine_train: int = 10000
    engine_holdout: int = 5000
    command: str = ""
    groups: str | None = None
    fold_probes: bool = False
    balance_groups: bool = False


def class_candidates(recipes: Sequence[Recipe], engine: Any) -> list[Recipe]:
    """The class recipes; with engine spectra each is also tried with them in its training folds."""
    from dataclasses import replace

    if engine is None:
        return list(recipes)
    return list(recipes) + [replace(r, name=r.name + " + engine spectra", engine=True) for r in recipes]


def classification_cv(task: Any, emb: np.ndarray, y: np.ndarray, surveys: np.ndarray,
                      rounds: list[dict[str, np.ndarray]], candidates: Sequence[Recipe], seed: int,
                      steps_scale: float, figures: Path | None, engine: Any = None,
                      flags: np.ndarray | None = None,
                      sources: np.ndarray | None = None) -> tuple[str, dict, dict, tuple]:
    """Cross-validate the class candidates: choice (by the worst source group when
    ``sources`` are given), per-round temperatures (survey spectra only: the many easy
    library stars would pull T towards their own over-confidence), scores, the shipped
    temperature; returns ``(best, report, calibration, (evaluation rows, calibrated
    probabilities, the chosen recipe's per-round outputs and probes))``."""
    outs = run_cv(task, emb, y, rounds, candidates, seed, steps_scale, engine)
    best, choice = choose_recipe(task, outs, y, rounds, groups=sources)
    fit = calibrate_classes(outs[best], y, rounds, fit_rows=~np.isin(surveys, LIBRARIES))
    ev_rows, prob, prob_raw = pooled(rounds, "evaluation"), fit["prob"], fit["prob_raw"]
    report = {
        "selection": {"metric": ("macro recall on the pooled calibration folds" if sources is None else
                                 "worst source group's macro recall on the pooled calibration folds "
                                 f"(groups of at least {MIN_GROUP_ROWS} rows), then the pooled macro recall"),
                      "scores": choice, "chosen": best},
        "temperature_per_round": fit["temperature_per_round"],
        **class_scores(task, prob, y[ev_rows], surveys[ev_rows], None if flags is None else flags[ev_rows],
                       prob_raw, None if sources is None else sources[ev_rows]),
    }
    if figures is not None:
        yy, survey_mask = y[ev_rows], ~np.isin(surveys[ev_rows], LIBRARIES)
        ece = {k: report["calibration"][k][f"ece_{ECE_BINS}_bins"]
               for k in ("uncalibrated", "temperature_scaled")}
        report["reliability_diagram"] = reliability_figure(
            {f"T = 1 (ECE {ece['uncalibrated']:.3f})": (prob_raw[survey_mask], yy[survey_mask]),
             f"T per round (ECE {ece['temperature_scaled']:.3f})": (prob[survey_mask], yy[survey_mask])},
            f"source class, survey spectra, N = {survey_mask.sum()}",
            figures / "reliability-source-class.png")
    calibration = {"temperature": fit["temperature"],
                   "fold": (f"fitted on the pooled calibration-fold logits of the {len(rounds)} grouped "
                            "cross-validation probes (each trained on other folds), survey spectra only "
                            f"(libraries {list(LIBRARIES)} left out)"),
                   "n": fit["n"]}
    return best, report, calibration, (ev_rows, prob, outs[best])


def _spread_report(task: Any, fit: dict[str, Any], ev_pred: np.ndarray, yt_ev: np.ndarray) -> dict[str, Any]:
    ok = np.isfinite(ev_pred - yt_ev)
    sigma, cover = fit["sigma"], fit["coverage"]
    space = ", ".join(f"{'log10 ' if task.transforms.get(t) == 'log10' else ''}{t}" for t in task.targets)
    return {
        "definition": ("sigma = sigma_scale * std over members (ddof 1) of the members' predictions in the "
                       f"fitted space ({space})"),
        "sigma_scale_per_round": [s.tolist() for s in fit["sigma_scale_per_round"]],
        "coverage_1sigma": {t: interval(int(round(cover[k] * ok[:, k].sum())), int(ok[:, k].sum()))
                            for k, t in enumerate(task.targets)},
        "median_sigma": {t: float(np.median(sigma[ok[:, k], k])) for k, t in enumerate(task.targets)},
    }


def regression_cv(task: Any, emb: np.ndarray, y: np.ndarray, rounds: list[dict[str, np.ndarray]],
                  candidates: Sequence[Recipe], seed: int, steps_scale: float,
                  baseline_x: np.ndarray | None = None) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """Cross-validate the regression candidates next to the baselines; an ensemble's spread
    is calibrated (``sigma_scale``). Returns ``(best, report, calibration or None)``."""
    from ...evaluation.harness import regression_metrics
    from ...probes import fit_normalization

    outs = run_cv(task, emb, y, rounds, candidates, seed, steps_scale)
    yt = fitted_targets(task, y)
    best, choice = choose_recipe(task, outs, yt, rounds)
    mean, std = fit_normalization(yt)          # only scales the reported normalized MSE

    def metrics(rows: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
        return regression_metrics(yt[rows], pred, task.targets, mean, std, task.transforms)

    ev_rows, ev_pred = pooled(rounds, "evaluation"), side_means(outs[best], "evaluation")
    report: dict[str, Any] = {
        "selection": {"metric": "normalized MSE on the pooled calibration folds", "scores": choice,
                      "chosen": best},
        "scores": {"omnispectra_probe": metrics(ev_rows, ev_pred),
                   **regression_baselines(task, yt, rounds, baseline_x, metrics)},
        "n": int(ev_rows.size),
    }
    if outs[best][0]["evaluation"].shape[0] < 2:
        return best, report, None
    fit = calibrate_spread(outs[best], yt, rounds)
    report["uncertainty"] = _spread_report(task, fit, ev_pred, yt[ev_rows])
    calibration = {"sigma_scale": [float(v) for v in fit["sigma_scale"]],
                   "coverage_1sigma": [float(v) for v in fit["coverage"]],
                   "spread": report["uncertainty"]["definition"],
                   "fold": ("sigma_scale fitted on the pooled calibration-fold predictions of the "
                            f"{len(rounds)} grouped cross-validation ensembles (each trained on other "
                            "folds); coverage_1sigma on their evaluation folds with per-round scales"),
                   "n": fit["n"]}
    return best, report, calibration


# ---------------------------------------------------------------------------------------
# inputs: embeddings, engine spectra, template fits, anomaly statistics


def cached_array(cache: Path | None, name: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()``, or the array stored as ``<cache>/<name>.npy`` by an earlier call."""
    path = None if cache is None else cache / f"{name}.npy"
    if path is not None and path.is_file():
        logger.info("%s from %s", name, path)
        return np.load(path)
    value = compute()
    if path is not None:
        from ...fileio import atomic_write

        with atomic_write(path) as tmp:
            np.save(tmp, value)
    return value


def anomaly_statistic_values(spectra: list, encoder: Any, n_masks: int | None = None) -> np.ndarray:
    """The values, float64, of the runtime's anomaly statistic (:func:`omnispectra.api.anomaly_statistic`
    with its defaults, named :data:`omnispectra.flags.ANOMALY_STATISTIC`; ``n_masks`` another
    mask count) of each spectrum."""
    from ...api import anomaly_statistic
    from ...inference.scoring import ANOMALY_N_MASKS

    values, _ids = anomaly_statistic(spectra, model=encoder, progress=False,
                                     n_masks=ANOMALY_N_MASKS if n_masks is None else n_masks)
    return np.asarray(values, dtype=np.float64)


def measure_anomaly_threshold(corpus: Sequence[str], encoder: Any, exclude: Sequence[str],
                              cache: Path | None = None, key: str = "",
                              n_masks: int | None = None) -> dict[str, Any]:
    """The ``ANOMALY`` threshold: the p99 of :func:`anomaly_statistic_values` over the
    validation side of the project's split of every real spectrum of ``corpus`` (surveys in
    ``exclude`` left out), pooled, with per-survey counts: the card's ``anomaly`` entry
    (``n_masks``: measured with another mask count than the runtime's, for comparisons)."""
    from ...dataset import SpectrumDataset
    from ...flags import ANOMALY_STATISTIC
    from ...inference.scoring import ANOMALY_N_MASKS
    from ...splits import DEFAULT_SEED, DEFAULT_VALIDATION_FRACTION, is_validation

    n_masks = ANOMALY_N_MASKS if n_masks is None else int(n_masks)

    ds = SpectrumDataset(list(corpus), return_index=False)
    surveys = np.asarray(ds.column("survey"), dtype=str)
    val = is_validation(ds.column("object_id"), DEFAULT_VALIDATION_FRACTION, DEFAULT_SEED)
    rows = np.flatnonzero(val & ~np.isin(surveys, list(exclude)))

    def score() -> np.ndarray:
        return anomaly_statistic_values([ds.spectrum(int(i)) for i in rows], encoder, n_masks)

    scores = cached_array(cache, f"anomaly-{ANOMALY_STATISTIC}-{n_masks}-{key}", score)
    ok = np.isfinite(scores)
    if not ok.any():
        raise ConfigError("no validation spectrum of the corpus has a finite anomaly statistic")
    p99 = float(np.percentile(scores[ok], 99))
    per = {s: {"n": int((ok & (surveys[rows] == s)).sum()),
               "median": float(np.median(scores[ok & (surveys[rows] == s)])),
               "n_above_p99": int((scores[ok & (surveys[rows] == s)] > p99).sum())}
           for s in sorted(set(surveys[rows][ok].tolist()))}
    return {"statistic": ANOMALY_STATISTIC, "p99": p99, "n_validation": int(ok.sum()),
            "n_masks": n_masks,
            "split": (f"omnispectra.splits.is_validation(fraction={DEFAULT_VALIDATION_FRACTION}, "
                      f"seed={DEFAULT_SEED}); all surveys pooled; excluded {list(exclude)}"),
            "per_survey": per}


def engine_embeddings(files: Sequence[str], n: int, encoder: Any, classes: Sequence[str],
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and class indices of ``n`` engine spectra drawn (seeded) from corpus ``files``."""
    from ...api import embed
    from ...dataset import SpectrumDataset

    ds = SpectrumDataset(list(files), return_index=False)
    labels = np.asarray(ds.column("class"), dtype=str)
    usable = np.flatnonzero(np.isin(labels, classes))
    rows = np.sort(np.random.default_rng(seed).choice(usable, min(n, usable.size), replace=False))
    emb = embed((ds[int(i)].tokens for i in rows), model=encoder, batch_size=32, progress=False)
    lookup = {c: k for k, c in enumerate(classes)}
    targets = np.array([lookup[c] for c in labels[rows]])
    return np.asarray(emb, dtype=np.float32).reshape(rows.size, -1), targets


def template_class_chi2(data: Any, rows: np.ndarray, templates: str) -> np.ndarray:
    """``(N, 3)`` chi-square of the best GALAXY, QSO and STAR template solution of each row
    (NaN where a class was not fitted), from one :class:`omnispectra.redshift.RedshiftFitter` fit."""
    from ...redshift import RedshiftFitter

    fitter = RedshiftFitter(directory=templates)
    out = np.full((len(rows), len(TEMPLATE_CLASSES)), np.nan)
    t0 = time.perf_counter()
    for i, r in enumerate(rows):
        chi2 = fitter.fit(data.dataset.spectrum(int(data.positions[int(r)]))).class_chi2
        out[i] = [chi2.get(c, np.nan) for c in TEMPLATE_CLASSES]
        if i % 200 == 199:
            logger.info("template fits: %d/%d (%.0f s)", i + 1, len(rows), time.perf_counter() - t0)
    return out


def input_flag_values(data: Any, rows: np.ndarray, encoder: Any) -> np.ndarray:
    """The input bits (OUTSIDE_SUPPORT, FEW_TOKENS, LOW_SN) the runtime would set on each row."""
    from ...flags import input_flags
    from ...inference.inputs import measure_input
    from ...runtime import wavelength_support

    support = wavelength_support(encoder)
    quality = []
    for r in rows:
        position = int(data.positions[int(r)])
        spectrum, tokens = data.dataset.spectrum(position), data.dataset[position].tokens
        quality.append(measure_input(spectrum, tokens, support)[0])
    return input_flags(quality)


def engine_holdout_report(probe: Any, engine_holdout: tuple[np.ndarray, np.ndarray],
                          classes: Sequence[str]) -> dict[str, Any]:
    """Recall and calibration of the shipped class probe on held-out engine spectra."""
    from ...evaluation import calibration as cal

    x, y = engine_holdout
    prob = cal.softmax(fitted_member_outputs(probe, x).mean(0), probe.temperature)
    return {"rows": "engine spectra not used in training (a different draw of the engine corpus)",
            **recall_report(y, prob.argmax(1), classes), "calibration": calibration_report(prob, y)}


# ---------------------------------------------------------------------------------------
# one task, and the whole run


@dataclass
class _Run:
    """What every task of one :func:`train_predictors` run shares."""

    options: PredictorOptions
    recipes: dict[str, list[Recipe]]
    encoder: Any
    desc: dict[str, Any]
    data: Any
    emb: np.ndarray
    keep: np.ndarray
    key: str
    data_key: str
    created: str

    @property
    def cache(self) -> Path | None:
        return Path(self.options.cache) if self.options.cache else None

    @property
    def figures(self) -> Path | None:
        return Path(self.options.figures) if self.options.figures else None


def _open_run(options: PredictorOptions) -> _Run:
    """Load the recipes, the encoder and the labelled spectra; embed them (cached)."""
    from ...evaluation.harness import TASKS, compute_embeddings, load_labeled
    from ...probes import encoder_description
    from ...runtime import resolve_model

    unknown = [t for t in options.tasks if t not in TASKS]
    if unknown:
        raise ConfigError(f"unknown task(s) {unknown}; known: {sorted(TASKS)}")
    recipes = load_recipes(options.recipes, options.tasks)
    encoder = resolve_model(options.weights, "cpu")
    desc = encoder_description(encoder)
    bundled = Path(options.weights).name == "omnispectra-default.safetensors"
    desc["name"] = "default" if bundled else str(options.weights)
    logger.info("encoder %s D=%d, sha256(tensors) %s", desc["name"], encoder.config.dim, desc["sha256"][:12])
    data = load_labeled(options.corpus, [TASKS[t] for t in options.tasks], max_per_dataset=10**9)
    ids = "|".join(map(str, data.meta["id"]))
    key = hashlib.sha256(f"{desc['sha256']}|{ids}".encode()).hexdigest()[:16]
    data_key = hashlib.sha256(ids.encode()).hexdigest()[:16]  # what does not depend on the encoder
    cache = Path(options.cache) if options.cache else None
    emb = cached_array(cache, f"embeddings-{key}", lambda: compute_embeddings(data, encoder, batch_size=32))
    logger.info("%d labelled spectra embedded", len(data))
    keep = ~np.isin(data.meta["survey"], options.exclude_surveys)
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return _Run(options, recipes, encoder, desc, data, emb, keep, key, data_key, created)


def _class_task(run: _Run, task: Any, rows: np.ndarray, y: np.ndarray, folds: np.ndarray,
                rounds: list[dict[str, np.ndarray]], engine: Any,
                sources: np.ndarray | None) -> tuple[Recipe, dict, dict]:
    """Cross-validate the class probe (and, with templates, the template combination)."""
    from ...class_evidence import COMBINATION_KEY

    opt, surv = run.options, run.data.meta["survey"][rows]
    candidates = class_candidates(run.recipes[task.name], engine)
    flags = input_flag_values(run.data, rows, run.encoder)
    best, cv, calibration, (ev_rows, prob_ev, chosen) = classification_cv(
        task, run.emb[rows], y, surv, rounds, candidates, opt.seed, opt.steps_scale, run.figures, engine,
        flags, sources)
    if opt.templates:
        prob_oof = np.empty_like(prob_ev)
        prob_oof[ev_rows] = prob_ev
        templates = templates_meta(opt.templates)["TMPLSHA"][:8]   # the files' content, not their path
        chi2 = cached_array(run.cache, f"template-chi2-{run.data_key}-{templates}",
                            lambda: template_class_chi2(run.data, rows, opt.templates))
        cv["with_templates"], calibration[COMBINATION_KEY] = template_combination_cv(
            task, prob_oof, chi2, y, surv, folds, flags, run.figures, sources,
            balance_groups=opt.balance_groups)
        logger.info("%s: network + templates macro recall %.3f", task.name,
                    cv["with_templates"]["macro_surveys"]["macro_recall"])
    if opt.fold_probes:
        _write_fold_probes(run, task, rows, rounds, chosen, cv, sources)
    logger.info("%s: macro recall (SDSS/BOSS/eBOSS, LAMOST, DESI, MILES) %.3f; ECE survey spectra "
                "%.3f -> %.3f; final T %.3f", task.name, cv["macro_surveys"]["macro_recall"],
                cv["calibration"]["uncalibrated"][f"ece_{ECE_BINS}_bins"],
                cv["calibration"]["temperature_scaled"][f"ece_{ECE_BINS}_bins"], calibration["temperature"])
    return next(r for r in candidates if r.name == best), cv, calibration


def _write_fold_probes(run: _Run, task: Any, rows: np.ndarray, rounds: list[dict[str, np.ndarray]],
                       chosen: list[dict[str, Any]], cv: dict[str, Any], sources: np.ndarray | None) -> None:
    """``<output>/folds/round-<r>/`` the round's probe (its temperature and template
    combination) and ``folds.json``: each round's evaluation rows (id, source file, survey,
    source group, labels) and training ids, for :mod:`benchmarks.source_validation`."""
    from ...class_evidence import COMBINATION_KEY
    from ...fileio import write_text
    from ...probes import save_probe

    folder, meta = Path(run.options.output) / "folds", run.data.meta
    combos = cv.get("with_templates", {}).get("per_round")
    listing = []
    for r, (out, idx) in enumerate(zip(chosen, rounds, strict=True)):
        probe = out["probe"]
        probe.encoder = dict(run.desc)
        probe.calibration = {"temperature": float(cv["temperature_per_round"][r]),
                             **({COMBINATION_KEY: combos[r]} if combos else {})}
        probe.info = {"name": task.name, "round": r, "created": run.created,
                      "cross_validation": "trained without the evaluation and calibration folds of its round"}
        target = folder / f"round-{r}" / PROBE_FILES[task.name]
        target.parent.mkdir(parents=True, exist_ok=True)
        save_probe(probe, target)
        ev = rows[idx["evaluation"]]
        listing.append({"round": r, "probe": str(target.relative_to(folder)),
                        "evaluation": [{"id": str(meta["id"][i]), "source_file": str(meta["source_file"][i]),
                                        "survey": str(meta["survey"][i]),
                                        "class": str(meta["source_class"][i]),
                                        "z": float(meta["z"][i]),
                                        "group": None if sources is None else str(sources[j])}
                                       for i, j in zip(ev, idx["evaluation"], strict=True)],
                        "train_ids": [str(meta["id"][i]) for i in rows[idx["train"]]]})
    write_text(folder / "folds.json", json.dumps({"task": task.name, "rounds": listing}, indent=1) + "\n")
    logger.info("%s: wrote the %d rounds' probes into %s", task.name, len(chosen), folder)


def _regression_task(run: _Run, task: Any, rows: np.ndarray, y: np.ndarray,
                     rounds: list[dict[str, np.ndarray]]) -> tuple[Recipe, dict, dict | None]:
    """Cross-validate a regression probe (stellar parameters also next to flux baselines)."""
    from ...evaluation import baselines

    x = None
    if task.name == "stellar_params":
        x, _ = baselines.resample_group(run.data.arrays(rows), max_pixels=run.options.baseline_pixels)
    candidates = run.recipes[task.name]
    best, cv, calibration = regression_cv(task, run.emb[rows], y, rounds, candidates, run.options.seed,
                                          run.options.steps_scale, x)
    for method, s in cv["scores"].items():
        logger.info("%s: %s: %s", task.name, method,
                    ", ".join(f"{k}={v:.3g}" for k, v in s.items() if k.startswith("mae_")))
    return next(r for r in candidates if r.name == best), cv, calibration


def task_rows(task: Any, meta: dict[str, np.ndarray], keep: np.ndarray) -> np.ndarray:
    """The rows of a labelled corpus (``meta``; ``keep``: surveys not excluded) a task's probe
    is trained on: its labelled rows, MILES only for the stellar parameters."""
    from ...evaluation.harness import labeled_rows

    rows = np.flatnonzero(labeled_rows(task, meta) & keep)
    if task.name == "stellar_params":
        rows = rows[meta["survey"][rows] == "miles"]
    return rows


def _engine_sets(run: _Run, task: Any) -> tuple[Any, Any]:
    """``(training, hold-out)`` engine (embeddings, class indices) of a class task, or Nones."""
    opt = run.options
    if task.kind != "classification" or not opt.engine:
        return None, None
    n = opt.engine_train + opt.engine_holdout
    files = [file_sha256(p) for p in opt.engine]   # their content and order, not their paths
    key = hashlib.sha256(f"{run.desc['sha256']}|{files}|{n}|{opt.seed}|{task.classes}".encode())

    def compute() -> np.ndarray:  # one cached array: the embeddings, then the class index
        x, y = engine_embeddings(opt.engine, n, run.encoder, task.classes, opt.seed)
        return np.concatenate([x, y[:, None].astype(np.float32)], axis=1)

    both = cached_array(run.cache, f"engine-{key.hexdigest()[:16]}", compute)
    x, y = both[:, :-1].astype(np.float32), both[:, -1].astype(np.int64)
    logger.info("%s: %d engine spectra embedded", task.name, len(x))
    return (x[:opt.engine_train], y[:opt.engine_train]), (x[opt.engine_train:], y[opt.engine_train:])


def _ship(run: _Run, task: Any, rows: np.ndarray, y: np.ndarray, recipe: Recipe, entry: dict[str, Any],
          engine: Any, holdout: Any) -> None:
    """Refit the chosen recipe on all labelled rows and write it (or remove a stale file)."""
    from ...flags import label_range
    from ...probes import save_probe

    target = Path(run.options.output) / PROBE_FILES[task.name]
    if not entry.get("shipped", True):
        logger.info("%s: does not beat the training mean in cross-validation; not shipped", task.name)
        for p in (target, target.with_suffix(".json")):
            p.unlink(missing_ok=True)
        return
    x_final, y_final = with_engine(recipe, run.emb[rows], y, engine)
    final = train_recipe(task, x_final, y_final, recipe, seed=run.options.seed, encoder_desc=run.desc,
                         steps_scale=run.options.steps_scale)
    final.calibration = entry["calibration"] or {}
    if holdout is not None and len(holdout[0]):
        entry["engine_holdout"] = engine_holdout_report(final, holdout, task.classes)
        logger.info("%s: engine hold-out (%d) accuracy %.3f", task.name, len(holdout[0]),
                    entry["engine_holdout"]["accuracy"]["value"])
    final.info = {"name": task.name, "recipe": recipe.to_dict(), "n_train": int(len(y_final)),
                  "cross_validation": (f"grouped {run.options.folds}-fold "
                                       f"({'by source' if run.options.groups else 'by object'}); "
                                       "details in predictors.json"),
                  "created": run.created,
                  "wavelength_support": run.data.dataset.wavelength_ranges(run.data.positions[rows])}
    if task.kind != "classification":   # what OUT_OF_DOMAIN in params_flag tests a value against
        final.info["label_range"] = label_range(task.targets, y_final)
    save_probe(final, target)
    logger.info("%s: wrote %s", task.name, target)


def _folds(run: _Run, task: Any, rows: np.ndarray) -> tuple[np.ndarray, str, np.ndarray | None]:
    """``(fold of every row, how the folds were made, source group of every row or None)``."""
    from ...splits import fold_of
    from .sources import load_source_groups, source_folds, source_groups

    opt, meta = run.options, run.data.meta
    by_object = fold_of(meta["object_id"][rows], opt.folds, opt.seed)
    if not opt.groups:
        return by_object, "object (omnispectra.splits.fold_of of object_id)", None
    sources = source_groups(meta["source_file"][rows], load_source_groups(opt.groups))
    n = len(set(sources.tolist()))
    if n < opt.folds:
        logger.info("%s: the rows come from %d source group(s), fewer than %d folds: grouped by object",
                    task.name, n, opt.folds)
        return by_object, f"object: the rows come from {n} source group(s) of {opt.groups}", sources
    survey_rows = ~np.isin(meta["survey"][rows], LIBRARIES)   # what the temperatures are fitted on
    return (source_folds(sources, opt.folds, weights=survey_rows),
            f"source groups of {opt.groups}, whole groups per fold, balanced by survey spectra", sources)


def _train_task(run: _Run, task: Any) -> dict[str, Any] | None:
    """Cross-validate, calibrate and ship one task; its ``predictors.json`` entry (None: too few rows)."""
    from ...evaluation.harness import task_targets

    opt, rows = run.options, task_rows(task, run.data.meta, run.keep)
    if rows.size < MIN_ROWS_PER_FOLD * opt.folds:
        logger.info("%s: only %d labelled spectra; skipped", task.name, rows.size)
        return None
    y, surv = task_targets(task, run.data.meta, rows), run.data.meta["survey"][rows]
    folds, folds_by, sources = _folds(run, task, rows)
    rounds = cv_rounds(folds, opt.folds)
    entry: dict[str, Any] = {"file": PROBE_FILES[task.name], "n_labelled": int(rows.size),
                             "surveys": {s: int((surv == s).sum()) for s in sorted(set(surv.tolist()))},
                             "folds_by": folds_by,
                             "fold_sizes": np.bincount(folds, minlength=opt.folds).tolist()}
    if sources is not None:
        entry["source_groups"] = {g: {"n": int((sources == g).sum()), "fold": int(folds[sources == g][0])}
                                  for g in sorted(set(sources.tolist()))}
    engine, holdout = _engine_sets(run, task)
    if task.kind == "classification":
        entry["class_counts"] = {c: int((y == k).sum()) for k, c in enumerate(task.classes)}
        recipe, cv, calibration = _class_task(run, task, rows, y, folds, rounds, engine, sources)
    else:
        recipe, cv, calibration = _regression_task(run, task, rows, y, rounds)
    entry.update({"recipe": recipe.to_dict(), "cross_validated": cv, "calibration": calibration})
    if task.name == "redshift":
        scores = cv["scores"]
        entry["shipped"] = bool(scores["omnispectra_probe"]["mse_norm"] < scores["trivial"]["mse_norm"])
    _ship(run, task, rows, y, recipe, entry, engine, holdout)
    return entry


def train_predictors(options: PredictorOptions) -> dict[str, Any]:
    """Train, cross-validate, calibrate and write the shipped predictors (see the module docstring).

    Returns
    -------
    dict
        The report written to ``<output>/predictors.json``.

    Raises
    ------
    ConfigError
        An unknown task, or a missing or invalid recipe file.
    """
    from ...evaluation.harness import TASKS
    from ...fileio import write_text

    t0 = time.perf_counter()
    run = _open_run(options)
    out = Path(options.output)
    report: dict[str, Any] = {
        "created": run.created, "command": options.command, "encoder": run.desc,
        "excluded_surveys": list(options.exclude_surveys),
        "cross_validation": {"k": options.folds, "seed": options.seed,
                             "folds": ("omnispectra.splits.fold_of: floor(object_hash(object_id, seed) * k)"
                                       if not options.groups else
                                       f"whole source groups of {options.groups} per fold, balanced by "
                                       "survey spectra (omnispectra.training.predictors.sources."
                                       "source_folds); see each task's folds_by"),
                             "rounds": "round r: evaluate fold r, calibrate and choose on fold r+1 mod k, "
                                       "train on the rest; scores pooled over rounds"},
        "steps_scale": options.steps_scale, "predictors": {},
    }
    for name in options.tasks:
        entry = _train_task(run, TASKS[name])
        if entry is not None:
            report["predictors"][name] = entry
    if options.anomaly:
        report["anomaly"] = measure_anomaly_threshold(options.corpus, run.encoder, options.exclude_surveys,
                                                      run.cache, run.key)
        logger.info("anomaly: p99 %.4g over %d spectra", report["anomaly"]["p99"],
                    report["anomaly"]["n_validation"])
    report["seconds"] = round(time.perf_counter() - t0, 1)
    keep_previous(report, out / "predictors.json")
    write_text(out / "predictors.json", json.dumps(report, indent=1, default=to_json) + "\n")
    logger.info("wrote %s in %s s", out / "predictors.json", report["seconds"])
    card = Path(options.card) if options.card else out / "omnispectra-default.json"
    if card.is_file():
        update_card(card, report)
        logger.info("updated %s", card)
    return report
