"""The auxiliary objectives against the paper's objective alone: same steps, paired seeds (issue 27).

Continues one encoder (``--init``, the bundled one by default) twice per seed from the
same training settings (``--config``, e.g. ``configs/encoder-aux-stream.yaml``): once with
its ``auxiliary`` terms (class, ln(1+z) and Teff heads plus the invariance term, on engine
spectra only) and once with ``auxiliary: null``, the paper's masked reconstruction alone.
Both arms of a seed see the same data: the same corpus, the same object-hash split
(``split_seed`` 0, the project's), the same engine stream (its ``seed`` and ``pairs``
fixed, so slot ``s`` of epoch ``e`` is the same spectrum in both), the same sampler
order and the same step count; the auxiliary arm's batches also hold the second view of
each engine object (its invariance term needs it).

Every finished encoder is scored on what a user of the embedding gets:

- the real validation spectra's masked MSE (the run's ``val_loss``, fixed masks);
- the paper-protocol harness (:func:`omnispectra.evaluation.harness.evaluate`, few-shot
  heads, ``--runs`` splits, ``test_side="validation"``: no test object was a donor or a
  pretraining spectrum): class macro F1 (all surveys) and stellar normalized MSE (MILES);
- retrieval (:func:`omnispectra.evaluation.retrieval.evaluate_retrieval`): per-class
  mean precision@10, all surveys pooled.

Seed ``s`` of the auxiliary arm is paired with seed ``s`` of the paper arm; the table
gives each arm's mean, the mean paired difference ``auxiliary - paper`` with its standard
error over seeds, and whether it exceeds two standard errors. Runs and scores are kept
in ``OUTPUT/<arm>/seed<s>/``; a rerun skips what is finished. Run::

    OMP_NUM_THREADS=2 python benchmarks/ablate_auxiliary.py corpus/*.h5 \\
        --config configs/encoder-aux-stream.yaml --max-steps 500 --seeds 0 1 2 \\
        -o runs/ablate-aux --markdown benchmarks/results/ablate-auxiliary.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from omnispectra.evaluation.stats import paired_difference
from omnispectra.fileio import write_text
from omnispectra.training.train import TrainConfig, export_checkpoint, train

PAPER, AUX = "paper objective", "auxiliary objectives"
#: metric -> (label, lower is better)
METRICS = {"val_mse": ("masked MSE, real validation spectra", True),
           "class_f1": ("class macro F1, few-shot (all surveys)", False),
           "stellar_mse": ("stellar normalized MSE, few-shot (MILES)", True),
           "retrieval_class": ("retrieval, class mean precision@10 (all)", False)}


def arm_config(base: TrainConfig, arm: str, seed: int, corpus: list[str], output: Path, init: str,
               max_steps: int, stream_seed: int) -> TrainConfig:
    """The training settings of one arm and seed (see the module docstring)."""
    if base.auxiliary is None:
        raise SystemExit("--config must name the auxiliary terms (its `auxiliary` mapping)")
    stream = None
    if base.engine_stream is not None:
        stream = {**base.engine_stream, "seed": stream_seed, "pairs": True}
    return base.replace(corpus=corpus, output=str(output), seed=seed, split_seed=0, max_steps=max_steps,
                        max_time_minutes=None, init_weights=init, progress=False, engine_stream=stream,
                        checkpoint_every=max_steps, val_every=max_steps,
                        auxiliary=None if arm == PAPER else dict(base.auxiliary))


def scores(encoder: Path, corpus: list[str], runs: int) -> dict[str, float]:
    """Harness (few-shot, validation-side tests) and retrieval figures of one encoder."""
    from omnispectra.evaluation.harness import evaluate
    from omnispectra.evaluation.retrieval import evaluate_retrieval

    result = evaluate(corpus, model=str(encoder), tasks=("source_class", "stellar_params"),
                      methods=("few-shot",), runs=runs, test_side="validation")

    def mean(task: str, group: str, metric: str) -> float:
        values = [r["value"] for r in result["runs"] if r["task"] == task and r["group"] == group
                  and r["method"] == "few-shot" and r["metric"] == metric]
        return float(np.mean(values)) if values else float("nan")

    table = evaluate_retrieval(corpus, model=str(encoder))["table"]
    sel = ((table["group"] == "all") & (table["method"] == "omnispectra") & (table["task"] == "class")
           & (table["label"] == "mean"))
    return {"class_f1": mean("source_class", "all", "f1_macro"),
            "stellar_mse": mean("stellar_params", "miles", "mse_norm"),
            "retrieval_class": float(table["precision"][sel][0]) if sel.any() else float("nan")}


def run_arm(config: TrainConfig, corpus: list[str], runs: int) -> dict[str, Any]:
    """Train (unless finished), export the encoder and score it (unless scored)."""
    out = Path(config.output)
    done = out / "scores.json"
    if done.is_file():
        return json.loads(done.read_text())
    start = time.perf_counter()
    result = train(config, resume=(out / "checkpoints" / "last.ckpt").is_file())
    encoder = out / "encoder.safetensors"
    sha = export_checkpoint(result["last_checkpoint"], encoder, overwrite=True)
    row = {"val_mse": result["val_loss"], "steps": result["steps"],
           "train_s": round(result["wall_time_s"], 1), "encoder_sha256": sha, **scores(encoder, corpus, runs),
           "engine_stream": result.get("engine_stream")}
    row["total_s"] = round(time.perf_counter() - start, 1)  # after the scoring, which it includes
    write_text(done, json.dumps(row, indent=1) + "\n")
    return row


def summary(rows: dict[str, dict[int, dict]], seeds: list[int]) -> list[dict]:
    out = []
    for metric, (label, lower) in METRICS.items():
        paper = np.array([rows[PAPER][s][metric] for s in seeds], dtype=np.float64)
        aux = np.array([rows[AUX][s][metric] for s in seeds], dtype=np.float64)
        paired = paired_difference(paper, aux)
        better = (paired["diff"] < 0) if lower else (paired["diff"] > 0)
        out.append({"metric": metric, "label": label, "paper": paper.tolist(), "auxiliary": aux.tolist(),
                    "diff": paired["diff"], "se": paired["se"], "beyond_2se": paired["beyond_2se"],
                    "auxiliary_better": bool(better)})
    return out


def markdown(table: list[dict], command: str, seeds: list[int], steps: int) -> str:
    lines = ["# Auxiliary objectives against the paper's objective alone", "", f"Command: `{command}`", "",
             f"{len(seeds)} paired seeds ({', '.join(map(str, seeds))}), {steps} steps per run.", "",
             "| metric | paper objective | auxiliary objectives | auxiliary - paper ± SE | beyond 2 SE |",
             "|---|---|---|---|---|"]
    for r in table:
        verdict = ("yes, " + ("better" if r["auxiliary_better"] else "worse")) if r["beyond_2se"] else "no"
        lines.append(f"| {r['label']} | {np.mean(r['paper']):.4f} | {np.mean(r['auxiliary']):.4f} "
                     f"| {r['diff']:+.4f} ± {r['se']:.4f} | {verdict} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", nargs="+", help="labelled corpus files (the harness scores on them too)")
    parser.add_argument("--config", required=True, help="training settings with the auxiliary terms")
    parser.add_argument("--init", default=str(Path(__file__).resolve().parents[1] / "omnispectra" / "data"
                                              / "omnispectra-default.safetensors"))
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--stream-seed", type=int, default=11)
    parser.add_argument("--runs", type=int, default=5, help="harness splits per encoder")
    parser.add_argument("-o", "--output", type=Path, default=Path("runs/ablate-aux"))
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    base = TrainConfig.from_yaml(args.config)
    corpus = [str(c) for c in args.corpus]
    rows: dict[str, dict[int, dict]] = {PAPER: {}, AUX: {}}
    for seed in args.seeds:
        for arm in (PAPER, AUX):
            folder = args.output / arm.split()[0] / f"seed{seed}"
            config = arm_config(base, arm, seed, corpus, folder, args.init, args.max_steps, args.stream_seed)
            rows[arm][seed] = run_arm(config, corpus, args.runs)
            print(f"{arm}, seed {seed}: {json.dumps(rows[arm][seed])}", file=sys.stderr)
    table = summary(rows, args.seeds)
    given = argv if argv is not None else sys.argv[1:]
    command = "python benchmarks/ablate_auxiliary.py " + " ".join(shlex.quote(a) for a in given)
    text = markdown(table, command, args.seeds, args.max_steps)
    write_text(args.output / "ablation.json", json.dumps({"command": command, "rows": rows, "table": table},
                                                         indent=1, default=float) + "\n")
    if args.markdown:
        write_text(args.markdown, text)
    print(text)
    return {"rows": rows, "table": table}


if __name__ == "__main__":
    main()
