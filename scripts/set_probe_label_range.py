#!/usr/bin/env python
"""Store in a regression probe the range of the labels it was trained on, without retraining it.

Usage::

    python scripts/set_probe_label_range.py corpus/*.h5 [--probe PROBE.safetensors]

``omnispectra train-predictors`` writes ``info["label_range"]`` into every regression probe it
ships (:func:`omnispectra.flags.label_range` of the labels the final probe was fitted on); a
value predicted outside that range is kept with ``OUT_OF_DOMAIN`` in ``params_flag``
(:func:`omnispectra.flags.label_range_flags`). This script adds the entry to a probe shipped
before that: the labels are the task's rows of the corpus the probe was trained on
(:func:`omnispectra.training.predictors.shipping.task_rows`: for the stellar parameters, the
labelled MILES stars; the ``unknown`` survey left out, as ``train-predictors`` does), and the
probe is rewritten atomically with its tensors and every other header entry unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from omnispectra.evaluation.harness import TASKS, load_labeled, task_targets
from omnispectra.flags import label_range
from omnispectra.probes import load_probe, save_probe
from omnispectra.training.predictors.shipping import task_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", nargs="+", help="the labelled corpus files the probe was trained on")
    parser.add_argument("--probe", type=Path,
                        default=Path(__file__).resolve().parents[1] / "omnispectra" / "data"
                        / "probe-stellar-params.safetensors", help="default: the bundled stellar probe")
    args = parser.parse_args(argv)
    probe = load_probe(args.probe)
    task = TASKS[probe.info["name"]]
    if task.kind != "regression":
        raise SystemExit(f"{args.probe} is a {task.kind} probe; only regression probes have a label range")
    data = load_labeled(args.corpus, [task], max_per_dataset=10**9)
    rows = task_rows(task, data.meta, ~np.isin(data.meta["survey"], ["unknown"]))
    if rows.size != probe.info.get("n_train", rows.size):
        raise SystemExit(f"{rows.size} labelled rows, but the probe was trained on {probe.info['n_train']}: "
                         "not the corpus it was trained on")
    probe.info = {**probe.info, "label_range": label_range(task.targets, task_targets(task, data.meta, rows))}
    save_probe(probe, args.probe)
    print(json.dumps(probe.info["label_range"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
