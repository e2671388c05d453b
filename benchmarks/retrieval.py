"""Retrieval with the embedding itself, next to PCA neighbours (issue 27).

Precision@10 of cosine nearest neighbours: validation spectra of the project's split
query the training side of their survey (and of all surveys pooled), never their own
object, file or plate; class, redshift bin and Teff within 10%
(:mod:`omnispectra.evaluation.retrieval`). Run::

    OMP_NUM_THREADS=1 python benchmarks/retrieval.py CORPUS.h5 ... --model default \\
        -o benchmarks/results/retrieval-default.md

``--reference ENGINE.h5 ...`` adds labelled engine spectra (``omnispectra simulate``, donors
from the training side) to the candidates: neighbours among simulations.

Writes the markdown report (the command at its top) and, next to it, the full table as
ECSV (``.ecsv``: every class, counts of queries and candidates).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", nargs="+", help="labelled corpus files or folders")
    parser.add_argument("--model", default="default", help="encoder: 'default' or a weights file")
    parser.add_argument("--reference", nargs="+", default=None,
                        help="engine corpora whose labelled spectra join the candidates (never queries)")
    parser.add_argument("-k", type=int, default=10, help="neighbours per query")
    parser.add_argument("--max-per-dataset", type=int, default=20_000)
    parser.add_argument("--min-queries", type=int, default=5)
    parser.add_argument("--baseline-pixels", type=int, default=2048)
    parser.add_argument("-o", "--output", type=Path,
                        help="markdown report (an .ecsv table is written next to it)")
    args = parser.parse_args(argv)

    from omnispectra.evaluation.retrieval import evaluate_retrieval
    from omnispectra.fileio import atomic_write, write_text

    start = time.perf_counter()
    result = evaluate_retrieval(args.corpus, model=args.model, k=args.k, max_per_dataset=args.max_per_dataset,
                                min_queries=args.min_queries, baseline_pixels=args.baseline_pixels,
                                progress=lambda msg: print(msg, file=sys.stderr), reference=args.reference)
    seconds = time.perf_counter() - start
    command = "python benchmarks/retrieval.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    encoder = ", ".join(f"{k}={v}" for k, v in sorted(result["encoder"].items()) if k in ("sha256", "name",
                                                                                      "checkpoint"))
    pool = (f" (of them {result['n_reference']} engine spectra, candidates only: each joins the group of "
            f"its donor's survey)" if result["n_reference"] else "")
    text = (f"# Retrieval precision@{args.k}\n\nCommand: `{command}`\n\nEncoder: {args.model} ({encoder}); "
            f"{result['n_spectra']} labelled spectra{pool}; {seconds:.0f} s wall.\n\n{result['report']}")
    print(text)
    if args.output is not None:
        write_text(args.output, text)
        with atomic_write(args.output.with_suffix(".ecsv")) as tmp:
            result["table"].write(tmp, format="ascii.ecsv")
    return result


if __name__ == "__main__":
    main()
