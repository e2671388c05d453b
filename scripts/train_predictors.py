#!/usr/bin/env python
"""Train, cross-validate and calibrate the predictors shipped with omnispectra.

A thin front end of :func:`omnispectra.training.predictors.train_predictors` (also
``omnispectra train-predictors``); the protocol is described there and in docs/probes.rst,
the candidate recipes are ``configs/predictor_recipes.yaml``.

Usage (the PyHammer templates in ``unknown.h5`` are templates, not observations: leave
them out; rows of the ``--exclude-surveys`` surveys are dropped anyway)::

    OMP_NUM_THREADS=1 python scripts/train_predictors.py omnispectra/data/omnispectra-default.safetensors \\
        $(ls corpus/*.h5 | grep -v unknown.h5) --engine engine/*.h5 --templates ../shared/data/templates \\
        -o omnispectra/data/ --figures benchmarks/results/
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "predictor_recipes.yaml"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", help="encoder weights file (safetensors) or model name")
    parser.add_argument("corpus", nargs="+", help="corpus HDF5 files")
    parser.add_argument("-o", "--output", default="omnispectra/data", help="output directory")
    parser.add_argument("--recipes", default=str(RECIPES), help="candidate recipes (YAML)")
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
    parser.add_argument("--groups", default=None,
                        help="source-group file (configs/source_groups.csv): folds leave whole sources out")
    parser.add_argument("--fold-probes", action="store_true",
                        help="also write each round's class probe into OUTPUT/folds/ "
                             "(benchmarks/source_validation.py)")
    parser.add_argument("--balance-groups", action="store_true",
                        help="every source group weighs the same in the template combination's fit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from omnispectra.training.predictors import PredictorOptions, train_predictors

    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    options = PredictorOptions(
        weights=args.weights, corpus=list(args.corpus), recipes=args.recipes, output=args.output,
        folds=args.folds, seed=args.seed, tasks=[t for t in args.tasks.split(",") if t],
        exclude_surveys=[s for s in args.exclude_surveys.split(",") if s],
        baseline_pixels=args.baseline_pixels, steps_scale=args.steps_scale, figures=args.figures or None,
        card=args.card, anomaly=not args.no_anomaly, cache=args.cache, engine=list(args.engine),
        templates=args.templates, engine_train=args.engine_train, engine_holdout=args.engine_holdout,
        groups=args.groups, fold_probes=args.fold_probes, balance_groups=args.balance_groups,
        command="python scripts/train_predictors.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    train_predictors(options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
