#!/usr/bin/env python
"""Measure the ``ANOMALY`` threshold of the bundled encoder and store it, without retraining any probe.

Usage::

    OMP_NUM_THREADS=2 python scripts/measure_anomaly_threshold.py corpus/*.h5 [--data-dir omnispectra/data]

The threshold is what ``omnispectra train-predictors`` measures
(:func:`omnispectra.training.predictors.measure_anomaly_threshold`: the 99th percentile of
:func:`omnispectra.anomaly_statistic` over the validation side of the project's split of
the labelled corpus, surveys pooled, ``unknown`` left out). This script writes it into
``predictors.json`` (the whole entry, with its per-survey counts, the command and the date)
and into the encoder card (``statistic``, ``p99``, ``n_validation``), both atomically, for
when the statistic changes and the probes do not.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

from omnispectra.runtime import resolve_model
from omnispectra.training.predictors import measure_anomaly_threshold
from omnispectra.training.predictors.reports import update_anomaly


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", nargs="+", help="labelled corpus files (omnispectra corpus build)")
    parser.add_argument("--data-dir", type=Path, help="where predictors.json and the card are")
    parser.set_defaults(data_dir=Path(__file__).resolve().parents[1] / "omnispectra" / "data")
    args = parser.parse_args(argv)
    entry = measure_anomaly_threshold(args.corpus, resolve_model("default", "cpu"), ["unknown"])
    entry["measured_by"] = {"command": "python scripts/measure_anomaly_threshold.py " + " ".join(
        shlex.quote(Path(c).name if Path(c).is_absolute() else c) for c in args.corpus),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    update_anomaly(args.data_dir / "predictors.json", args.data_dir / "omnispectra-default.json", entry)
    print(json.dumps({k: entry[k] for k in ("statistic", "p99", "n_validation")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
