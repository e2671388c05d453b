"""Two encoders side by side in the paper-protocol harness, with paired differences.

Runs :func:`omnispectra.evaluation.harness.evaluate` for both encoders on the same
corpus, tasks, methods and run seeds (so run ``k`` uses the identical object-grouped
split and head initialisation for both), pairs the per-run scores and reports for each
(task, group, method, metric): both means, the mean paired difference ``new - old``,
its standard error ``std(diff, ddof=1) / sqrt(runs)`` and whether the new encoder is
better by more than two standard errors (higher F1 / R^2, lower MSE / MAE).

Run::

    python benchmarks/compare_encoders.py CORPUS.h5 ... --old OLD.safetensors --new NEW.safetensors \\
        --runs 5 --methods few-shot -o benchmarks/results/compare-encoders

Writes ``compare.json`` and ``compare.md`` into the output folder.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from omnispectra.evaluation.stats import paired_difference

#: Metrics where smaller is better; every other metric is better when larger.
LOWER_IS_BETTER = ("mse", "mae", "brier", "ece")


def lower_is_better(metric: str) -> bool:
    return metric.startswith(LOWER_IS_BETTER)


def paired_differences(old_rows: list[dict], new_rows: list[dict]) -> list[dict]:
    """Pair per-run rows of two harness results by (task, group, method, metric, run)."""
    old = {(r["task"], r["group"], r["method"], r["metric"], r["run"]): r["value"] for r in old_rows}
    pairs: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for r in new_rows:
        key = (r["task"], r["group"], r["method"], r["metric"], r["run"])
        if key in old and np.isfinite(old[key]) and np.isfinite(r["value"]):
            pairs[key[:4]].append((old[key], r["value"]))
    out = []
    for (task, group, method, metric), values in sorted(pairs.items()):
        a = np.array(values)
        paired = paired_difference(a[:, 0], a[:, 1])
        gain, se = (-paired["diff"] if lower_is_better(metric) else paired["diff"]), paired["se"]
        out.append({"task": task, "group": group, "method": method, "metric": metric, "runs": paired["n"],
                    "old": float(a[:, 0].mean()), "new": float(a[:, 1].mean()), "diff": paired["diff"],
                    "se": se, "better_by_2se": bool(np.isfinite(se) and gain > 2 * se)})
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", nargs="+")
    parser.add_argument("--old", required=True)
    parser.add_argument("--new", required=True)
    parser.add_argument("--tasks", default="source_class,stellar_params")
    parser.add_argument("--methods", default="few-shot")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--test-side", default="any", choices=["any", "validation"],
                        help="validation: test halves hold only objects no pretraining run or engine "
                             "donor touched (an encoder pretrained with engine labels)")
    parser.add_argument("--metrics", default="f1_macro,mse_norm,mae_teff,mae_logg,mae_fe_h",
                        help="metrics kept in the markdown table (all are in the JSON)")
    parser.add_argument("-o", "--output", type=Path, default=Path("benchmarks/results/compare-encoders"))
    args = parser.parse_args(argv)

    from omnispectra.evaluation.harness import evaluate

    common = dict(tasks=args.tasks.split(","), methods=args.methods.split(","), runs=args.runs,
                  test_side=args.test_side)
    old = evaluate(args.corpus, model=args.old, **common)
    new = evaluate(args.corpus, model=args.new, **common)
    rows = paired_differences(old["runs"], new["runs"])
    keep = set(args.metrics.split(","))
    lines = ["| task | group | method | metric | old | new | new - old | SE | better by > 2 SE |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["metric"] in keep:
            lines.append(f"| {r['task']} | {r['group']} | {r['method']} | {r['metric']} | {r['old']:.4f} | "
                         f"{r['new']:.4f} | {r['diff']:+.4f} | {r['se']:.4f} | "
                         f"{'yes' if r['better_by_2se'] else 'no'} |")
    args.output.mkdir(parents=True, exist_ok=True)
    result = {"old": str(args.old), "new": str(args.new), "settings": common | {"corpus": args.corpus},
              "paired": rows}
    (args.output / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output / "compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
