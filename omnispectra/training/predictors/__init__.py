"""Predictor training: grouped cross-validation, calibration and shipping of probes.

- :mod:`.recipes`: candidate recipes (:class:`Recipe`), read from YAML with a validated
  schema (:func:`load_recipes`; the shipped candidates are ``configs/predictor_recipes.yaml``);
- :mod:`.crossval`: the protocol shared by everything here: grouped folds, rounds, recipe
  choice, temperature and ``sigma_scale`` calibration;
- :mod:`.userprobe`: :func:`train_probe` / :func:`train_probe_from_files`: a calibrated probe
  on your own labels (``omnispectra train-probe``);
- :mod:`.shipping` and :mod:`.reports`: :func:`train_predictors`, the predictors shipped with
  the package, ``predictors.json`` and the anomaly threshold (``omnispectra train-predictors``).

Training needs Lightning (the ``train`` extra).
"""

from .crossval import (
    calibrate_classes,
    calibrate_spread,
    choose_recipe,
    cv_rounds,
    grouped_folds,
    run_cv,
    train_recipe,
)
from .recipes import Recipe, candidate_set, load_recipes, read_recipes, recipe_from_mapping
from .shipping import PredictorOptions, measure_anomaly_threshold, train_predictors
from .userprobe import ProbeCV, cross_validate_probe, probe_task, train_probe, train_probe_from_files

__all__ = ["Recipe", "candidate_set", "load_recipes", "read_recipes", "recipe_from_mapping", "grouped_folds",
           "cv_rounds", "run_cv", "train_recipe", "choose_recipe", "calibrate_classes", "calibrate_spread",
           "probe_task", "ProbeCV", "cross_validate_probe", "train_probe", "train_probe_from_files",
           "PredictorOptions", "train_predictors", "measure_anomaly_threshold"]
