"""Cross-validation, refit and survey scores of ``scripts/train_stellar_survey.py`` (stages 5-6)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger("train_stellar_survey")
NAMES = ("teff", "logg", "fe_h")
TEFF_TOLERANCE = 0.12


def _mae(truth: np.ndarray, pred: np.ndarray) -> list[float]:
    """MAE per parameter (physical units; truth NaN skipped)."""
    return [float(np.nanmean(np.abs(pred[:, j] - truth[:, j]))) for j in range(truth.shape[1])]


def _physical(fitted: np.ndarray) -> np.ndarray:
    out = np.array(fitted, dtype=np.float64)
    out[:, 0] = 10 ** out[:, 0]
    return out


def _baselines(flux: np.ndarray, yt: np.ndarray, folds: np.ndarray, k: int) -> dict[str, list[float]]:
    """PCA + ridge and 5-NN in PCA space on MILES fluxes, the probe's folds (rounds of cv_rounds)."""
    from omnispectra.evaluation import baselines
    from omnispectra.training.predictors import crossval

    preds = {"pca_ridge": np.zeros_like(yt), "knn5_pca": np.zeros_like(yt)}
    for idx in crossval.cv_rounds(folds, k):
        tr = np.concatenate([idx["train"], idx["calibration"]])
        ev = idx["evaluation"]
        preds["pca_ridge"][ev] = baselines.pca_ridge(flux[tr], yt[tr], flux[ev])
        preds["knn5_pca"][ev] = baselines.knn_pca(flux[tr], yt[tr], flux[ev], k=5)
    return {name: _mae(_physical(yt), _physical(p)) for name, p in preds.items()}


def _support(data: dict) -> dict:
    """``support_by_grid`` of the training spectra (see omnispectra.probes.stellar_grids); the
    library's own grid under the name the runtime routes to the library probe."""
    from omnispectra.inference.rows import LIBRARY_GRID

    eng = data["engine"]
    out = {}
    for grid in sorted(set(eng["grid"].tolist())):
        r = eng["range"][eng["grid"] == grid]
        out[grid] = {"wavelength": [float(np.median(r[:, 0])), float(np.median(r[:, 1]))],
                     "resolution": [float(r[:, 2].min()), float(r[:, 2].max())], "n": int(len(r))}
    w = np.linspace(3541.5, 7411.6, 4300)
    res = float(np.median(w[1:] / np.diff(w)))
    out[LIBRARY_GRID] = {"wavelength": [3541.5, 7411.6], "resolution": [res, res],
                    "n": int(len(data["miles"]["y"]))}
    return out


def _cv(args, x, y, groups):
    from omnispectra.training.predictors import candidate_set, crossval, probe_task

    task = probe_task("stellar_params", "regression", list(NAMES), {"teff": "log10"},
                      {"teff": "K", "logg": "dex", "fe_h": "dex"})
    folds = crossval.grouped_folds(groups, 5, 0)
    rounds = crossval.cv_rounds(folds, 5)
    cands = candidate_set(args.recipes, args.recipe_set)
    outs = crossval.run_cv(task, x, y, rounds, cands, 0, args.steps_scale)
    yt = crossval.fitted_targets(task, y)
    best, choice = crossval.choose_recipe(task, outs, yt, rounds)
    spread = crossval.calibrate_spread(outs[best], yt, rounds)
    return task, folds, rounds, cands, outs, yt, best, choice, spread


def _survey_scores(teff: np.ndarray, ref: np.ndarray, flags: np.ndarray, surveys: np.ndarray) -> dict:
    out = {}
    for s in sorted(set(surveys.tolist())) + ["all"]:
        m = np.ones(surveys.size, bool) if s == "all" else surveys == s
        ok = np.abs(teff[m] / ref[m] - 1) <= TEFF_TOLERANCE
        f0 = flags[m] == 0
        out[s] = {"n": int(m.sum()), "flag0_fraction": float(f0.mean()),
                  "teff_within_12pc_flag0": float(ok[f0].mean()) if f0.any() else float("nan"),
                  "n_flag0": int(f0.sum()), "teff_within_12pc_all": float(ok.mean())}
    return out


def _refit(args, data, task, x, y, cands, best, spread, choice):
    from omnispectra.flags import label_range
    from omnispectra.probes import encoder_description
    from omnispectra.training.predictors import crossval

    recipe = next(r for r in cands if r.name == best)
    probe = crossval.train_recipe(task, x, y, recipe, seed=0, encoder_desc=encoder_description(data["model"]),
                                  steps_scale=args.steps_scale)
    probe.calibration = {"sigma_scale": [float(v) for v in spread["sigma_scale"]],
                         "coverage_1sigma": [float(v) for v in spread["coverage"]], "n": spread["n"],
                         "fold": "fitted on the pooled calibration-fold predictions of the 5 grouped "
                                 "(by MILES star) cross-validation ensembles, MILES and engine rows"}
    probe.info = {"name": "stellar_params_survey", "recipe": recipe.to_dict(), "n_train": int(len(y)),
                  "training": "MILES stars and MILES stars observed through survey donors (engine)",
                  "selection": choice, "input_window": [3541.5, 7411.6], "support_by_grid": _support(data),
                  "wavelength_support": {"unit": "Angstrom (vacuum), valid pixels",
                                         "overall": [3541.5, 7411.6]},
                  "label_range": label_range(list(NAMES), y)}
    return probe


def evaluate(args, data: dict) -> dict:
    """Stages 5-6 (see the script's docstring); writes the probe and ``<results>.json/.md``."""
    from omnispectra.probes import load_probe, save_probe, stellar_domain_flags

    mi, en, sv = data["miles"], data["engine"], data["survey"]
    n_m = len(mi["y"])
    x = np.concatenate([mi["emb"], en["emb"]]).astype(np.float32)
    y = np.concatenate([mi["y"], en["y"]])
    groups = np.concatenate([mi["group"], en["group"]])
    source = np.concatenate([np.full(n_m, "miles"), en["grid"]])
    task, folds, rounds, cands, outs, yt, best, choice, spread = _cv(args, x, y, groups)
    ev = np.concatenate([r["evaluation"] for r in rounds])
    pred = np.zeros_like(yt)
    pred[ev] = np.concatenate([o["evaluation"].mean(0) for o in outs[best]])
    sigma, resid = np.zeros_like(yt), np.zeros_like(yt)
    sigma[ev], resid[ev] = spread["sigma"], spread["residual"]
    m = source == "miles"
    with np.errstate(invalid="ignore"):
        ok = [np.isfinite(resid[m, j]) for j in range(3)]
        cover = [float(np.mean(np.abs(resid[m, j][ok[j]]) <= sigma[m, j][ok[j]])) for j in range(3)]
    report = {"recipe": best, "selection": choice, "n_miles": n_m, "n_engine": int(len(en["y"])),
              "miles_cv": {"probe_mae": _mae(y[m], _physical(pred[m])), "coverage_1sigma": cover,
                           **_baselines(mi["flux"], yt[:n_m], folds[:n_m], 5)}}
    probe = _refit(args, data, task, x, y, cands, best, spread, choice)
    eng = {}
    for grid in sorted(set(en["grid"].tolist())):
        g = np.flatnonzero(source == grid)
        r = en["range"][g - n_m]
        fl = stellar_domain_flags(probe, [row[:2] for row in r], r[:, 2])
        eng[grid] = {**_survey_scores(_physical(pred[g])[:, 0], y[g, 0], fl, np.full(g.size, grid))[grid],
                     "mae": _mae(y[g], _physical(pred[g]))}
    report["engine_heldout"] = eng
    rows = data["rows"]
    keep = np.array([r["role"] == "validation" for r in rows])
    ends = np.cumsum(sv["wave_len"])
    waves = [sv["wave_flat"][e - n:e] for e, n in zip(ends, sv["wave_len"], strict=True)]
    flags = stellar_domain_flags(probe, [w for w, k in zip(waves, keep, strict=True) if k])
    ref = np.array([float(r["teff_ref"]) for r in rows])[keep]
    surveys = np.array([r["survey"] for r in rows])[keep]
    new_teff = probe.predict(sv["emb"][keep])[:, 0]
    old = load_probe(Path(__file__).resolve().parents[1] / "omnispectra" / "data"
                     / "probe-stellar-params.safetensors")
    old_teff = old.predict(sv["emb"][keep])[:, 0]
    report["survey_new"] = _survey_scores(new_teff, ref, flags, surveys)
    report["survey_shipped_same_flags"] = _survey_scores(old_teff, ref, flags, surveys)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    probe.info["validation"] = {"miles_cv": report["miles_cv"], "survey": report["survey_new"],
                                "engine_heldout": report["engine_heldout"]}
    save_probe(probe, out / "probe-stellar-params.safetensors")
    Path(args.results + ".json").write_text(json.dumps(report, indent=1, default=float))
    return report


def markdown(report: dict) -> str:
    """The per-survey table of a report (``python scripts/stellar_survey_eval.py REPORT.json``)."""
    cv = report["miles_cv"]
    lines = [f"# Stellar probe on survey grids (recipe: {report['recipe']})", "",
             f"Held-out MILES ({report['n_miles']} stars, grouped 5-fold), MAE Teff (K) / logg / [Fe/H]:", "",
             "| method | Teff | logg | [Fe/H] |", "|---|---|---|---|"]
    for name in ("probe_mae", "pca_ridge", "knn5_pca"):
        lines.append(f"| {name} | {cv[name][0]:.0f} | {cv[name][1]:.3f} | {cv[name][2]:.3f} |")
    lines += ["", "+-1 sigma coverage: " + " / ".join(f"{c:.3f}" for c in cv["coverage_1sigma"]), "",
              "| set | survey / grid | N | flag 0 | Teff within 12% (flag 0) | shipped probe, within 12% |",
              "|---|---|---|---|---|---|"]
    for s, v in report["survey_new"].items():
        old = report["survey_shipped_same_flags"][s]
        lines.append(f"| real stars | {s} | {v['n']} | {v['n_flag0']}/{v['n']} = {v['flag0_fraction']:.2f} | "
                     f"{v['teff_within_12pc_flag0']:.2f} | {old['teff_within_12pc_flag0']:.2f} |")
    for s, v in report["engine_heldout"].items():
        lines.append(f"| held-out engine | {s} | {v['n']} | {v['flag0_fraction']:.2f} | "
                     f"{v['teff_within_12pc_flag0']:.2f} (MAE {v['mae'][0]:.0f} K / {v['mae'][1]:.2f} / "
                     f"{v['mae'][2]:.2f}) | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    path = Path(sys.argv[1])
    path.with_suffix(".md").write_text(markdown(json.loads(path.read_text())))
