"""The stellar probe's margin on held-out MILES stars (issue #24): the shipped recipe against PCA
baselines on the stars' fluxes, and blends of the probe with each baseline.

The MILES stars, their pooled embeddings (bundled encoder) and their fluxes on the library's
common grid come from the cache of ``scripts/train_stellar_survey.py`` (``miles.npz``). Folds are
grouped by star (:func:`omnispectra.training.predictors.crossval.grouped_folds`, seed 0); each
round trains on three folds, chooses on the next (calibration) and is scored on its own
(evaluation), as the shipped probe's cross-validation does. A blend ``w * probe + (1 - w) *
baseline`` (in the fitted space: log10 Teff, logg, [Fe/H]) takes per parameter the ``w`` of
0, 0.05, ..., 1 with the lowest MAE on the pooled calibration folds, then is scored on the
evaluation folds. The issue's target is an MAE of at most 0.85 times the better baseline.

Usage (about 15 min on one core)::

    python benchmarks/stellar_margin.py /tmp/stars/cache/miles.npz -o benchmarks/results/stellar-margin
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

SIDES = ("calibration", "evaluation")
WEIGHTS = np.linspace(0.0, 1.0, 21)
TARGET_RATIO = 0.85


def mae(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-parameter MAE in physical units of fitted-space predictions (the task's transforms
    undone: Teff from its log10)."""
    from omnispectra.evaluation.harness import TASKS, untransform_targets

    return np.nanmean(np.abs(untransform_targets(TASKS["stellar_params"], pred) - truth), axis=0)


def star_rounds(group: np.ndarray) -> list[dict[str, np.ndarray]]:
    """The five grouped rounds (train / calibration / evaluation rows) every MILES margin
    comparison uses: folds grouped by star, seed 0."""
    from omnispectra.training.predictors.crossval import cv_rounds, grouped_folds

    return cv_rounds(grouped_folds(group, 5, seed=0), 5)


def blend_weights(probe: np.ndarray, other: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per parameter, the weight of the probe (of :data:`WEIGHTS`) with the lowest MAE."""
    scores = np.stack([mae(w * probe + (1 - w) * other, truth) for w in WEIGHTS])   # (W, 3)
    return WEIGHTS[np.argmin(scores, axis=0)]


def predictions(emb: np.ndarray, y: np.ndarray, group: np.ndarray, flux: np.ndarray,
                steps: int) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Pooled calibration/evaluation predictions (fitted space) of the probe and the baselines,
    and the pooled rows of each side."""
    from omnispectra.evaluation import baselines
    from omnispectra.evaluation.harness import TASKS
    from omnispectra.training.predictors.crossval import (
        fitted_targets,
        pooled,
        run_cv,
        side_means,
    )
    from omnispectra.training.predictors.recipes import Recipe

    task = TASKS["stellar_params"]
    rounds = star_rounds(group)
    yt = fitted_targets(task, y)
    # the shipped probe's recipe (predictors.json: stellar_params)
    recipe = Recipe(name="shipped", head="mlp", hidden=(512,), dropout=0.2, steps=steps, lr=1e-3,
                    members=5, loss="l1")
    outs = run_cv(task, emb, y, rounds, [recipe])["shipped"]
    out = {"probe": {side: side_means(outs, side) for side in SIDES}}
    fits = (("pca_ridge_flux", baselines.pca_ridge, flux), ("knn_pca_flux", baselines.knn_pca, flux),
            ("knn_pca_embedding", baselines.knn_pca, emb))
    for name, fit, x in fits:
        out[name] = {side: np.concatenate([fit(x[idx["train"]], yt[idx["train"]], x[idx[side]])
                                           for idx in rounds]) for side in SIDES}
    return out, {side: pooled(rounds, side) for side in SIDES}


def miles_arguments(description: str, out: str) -> argparse.ArgumentParser:
    """The command line of the MILES margin benchmarks: the cache's ``miles.npz``, the probe's
    training steps and the output stem (default ``out``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("miles", type=Path, help="miles.npz of scripts/train_stellar_survey.py's cache")
    parser.add_argument("--steps", type=int, default=4000, help="probe training steps (shipped: 4000)")
    parser.add_argument("-o", "--out", type=Path, default=Path(out))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = miles_arguments(__doc__.splitlines()[0], "benchmarks/results/stellar-margin").parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch

    from omnispectra.fileio import write_text

    torch.set_num_threads(1)
    with np.load(args.miles, allow_pickle=False) as z:
        emb, y, group, flux = (z[k] for k in ("emb", "y", "group", "flux"))
    preds, rows = predictions(emb, y, group, flux, args.steps)
    truth = {side: y[rows[side]] for side in SIDES}
    scores = {name: mae(p["evaluation"], truth["evaluation"]).tolist() for name, p in preds.items()}
    blends = {}
    for name in ("pca_ridge_flux", "knn_pca_flux", "knn_pca_embedding"):
        w = blend_weights(preds["probe"]["calibration"], preds[name]["calibration"], truth["calibration"])
        blended = w * preds["probe"]["evaluation"] + (1 - w) * preds[name]["evaluation"]
        blends[name] = {"probe_weight": w.tolist(), "mae": mae(blended, truth["evaluation"]).tolist()}
    better = np.minimum(scores["pca_ridge_flux"], scores["knn_pca_flux"])
    report = {"n_stars": int(len(y)), "steps": args.steps, "mae": scores, "blends": blends,
              "target": (TARGET_RATIO * better).tolist(),
              "command": f"python benchmarks/stellar_margin.py {args.miles.name} -o {args.out}"}
    lines = [f"# Stellar probe's margin on held-out MILES ({len(y)} stars, grouped 5-fold)", "",
             f"`{report['command']}` (miles.npz: the cache of `scripts/train_stellar_survey.py`)", "",
             "| method | MAE Teff (K) | logg | [Fe/H] |", "|---|---|---|---|"]
    fmt = "| {} | {:.0f} | {:.3f} | {:.3f} |"
    lines += [fmt.format(name, *v) for name, v in scores.items()]
    for name, b in blends.items():
        weights = ", ".join(f"{w:.2f}" for w in b["probe_weight"])
        lines.append(fmt.format(f"blend probe + {name} (probe weight {weights})", *b["mae"]))
    lines += [fmt.format(f"target: {TARGET_RATIO} x the better flux baseline", *report["target"]), ""]
    write_text(args.out.with_suffix(".json"), json.dumps(report, indent=1) + "\n")
    write_text(args.out.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
