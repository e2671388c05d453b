#!/usr/bin/env python
"""Stellar parameters of real survey stars as users get them: ``predict_stellar_parameters``
on the files, the bundled pair of probes (MILES grid -> the MILES probe, survey grids -> the
survey probe) against the MILES probe alone (``stellar_survey_probe=False``), side by side.

Scored on the ``validation`` stars of ``benchmarks/stellar_survey_stars.csv`` (listed before
any training; never a donor, never trained on), per survey: rows with ``params_flag == 0``,
Teff within 12% of the reference among them, and how often the reference lies within the
row's +-1 sigma ``teff_err`` (the reference's own error ignored). MILES stars read from their
files are reported too (in-sample for both probes: a check that they keep the MILES probe).

Usage (about 4 min on one core)::

    OMNISPECTRA_DATA_DIR=../shared/data python benchmarks/stellar_survey_route.py \\
        -o benchmarks/results/stellar-survey-route.md
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from _common import data_dir, emit

STARS = Path(__file__).with_name("stellar_survey_stars.csv")
WITHIN = 0.12


def _rows(root: Path, miles: int) -> list[dict]:
    with open(STARS) as fh:
        rows = [r for r in csv.DictReader(fh) if r["role"] == "validation"]
    with open(root / "miles" / "index.csv") as fh:   # the MILES catalogue's Teff
        library = [r for r in csv.DictReader(fh) if 0 < float(r["Teff"] or "nan") < 9e4]
    rows += [{"file": r["file"], "survey": "miles (in-sample)", "teff_ref": r["Teff"]}
             for r in library[:miles]]
    return rows


def run(root: Path, rows: list[dict], survey_probe) -> dict[str, dict]:
    """One table row per star (by file): teff, teff_err, params_flag, params_by."""
    from omnispectra import predict_stellar_parameters

    table = predict_stellar_parameters([str(root / r["file"]) for r in rows], on_error="skip", progress=False,
                                       stellar_survey_probe=survey_probe)
    out = {}
    for row in table:
        key = str(Path(row["source_file"]).resolve())
        out.setdefault(key, {"teff": float(row["teff"]), "teff_err": float(row["teff_err"]),
                             "params_flag": int(row["params_flag"]), "params_by": str(row["params_by"])})
    return out


def score(root: Path, rows: list[dict], got: dict[str, dict]) -> dict[str, dict]:
    per = defaultdict(list)
    for r in rows:
        answer = got.get(str((root / r["file"]).resolve()))
        per[r["survey"]].append((float(r["teff_ref"]), answer))
        if not r["survey"].startswith("miles"):
            per["all surveys"].append((float(r["teff_ref"]), answer))
    out = {}
    for survey, items in per.items():
        ref = np.array([t for t, a in items if a is not None])
        answers = [a for _, a in items if a is not None]
        teff = np.array([a["teff"] for a in answers])
        err = np.array([a["teff_err"] for a in answers])
        f0 = np.array([a["params_flag"] == 0 for a in answers], dtype=bool)
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = np.abs(teff / ref - 1.0) <= WITHIN
            covered = np.abs(teff - ref) <= err
            pulls = np.abs(teff - ref)[f0] / err[f0]
        pulls = pulls[np.isfinite(pulls)]
        by = defaultdict(int)
        for a in answers:
            by[a["params_by"]] += 1
        out[survey] = {"n": len(items), "answered": len(answers), "flag0": int(f0.sum()),
                       "within_flag0": int(ok[f0].sum()), "covered_flag0": int(covered[f0].sum()),
                       # the factor on teff_err that would make +-1 sigma hold 68.3% of these rows
                       "err_scale_683": float(np.quantile(pulls, 0.683)) if pulls.size else float("nan"),
                       "params_by": dict(by)}
    return out


def _frac(k: int, n: int) -> str:
    return f"{k}/{n} = {k / n:.2f}" if n else "-"


def markdown(report: dict) -> str:
    lines = ["# Stellar parameters of real survey stars through `predict_stellar_parameters`", "",
             f"Command: `{report['command']}`", "",
             "Validation stars of `benchmarks/stellar_survey_stars.csv` (reference Teff: PyLASP or the "
             "spectral type on the Pecaut & Mamajek dwarf scale); MILES files in-sample.", "",
             "| survey | set-up | N | flag 0 | Teff within 12% (flag 0) | ref within +-1 sigma (flag 0) "
             "| teff_err scale for 68.3% | answered by |",
             "|---|---|---|---|---|---|---|---|"]
    last = ("all surveys", "miles (in-sample)")
    for survey in sorted(set(report["pair"]) - set(last)) + list(last):
        for name, label in (("pair", "MILES + survey probe (shipped)"), ("alone", "MILES probe alone")):
            s = report[name][survey]
            by = ", ".join(f"{k} {v}" for k, v in sorted(s["params_by"].items()))
            lines.append(f"| {survey} | {label} | {s['n']} | {_frac(s['flag0'], s['n'])} | "
                         f"{_frac(s['within_flag0'], s['flag0'])} | {_frac(s['covered_flag0'], s['flag0'])} "
                         f"| {s['err_scale_683']:.2f} | {by} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--miles", type=int, default=40, help="MILES files read as an in-sample check")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="markdown report (a .json next to it)")
    args = parser.parse_args(argv)
    root = data_dir()
    if root is None:
        print("no shared data folder (set OMNISPECTRA_DATA_DIR): nothing to measure")
        return 0
    rows = _rows(root, args.miles)
    report = {"command": "OMNISPECTRA_DATA_DIR=../shared/data python benchmarks/stellar_survey_route.py "
                         f"--miles {args.miles}" + (f" -o {args.output}" if args.output else "")}
    for name, survey_probe in (("pair", None), ("alone", False)):
        report[name] = score(root, rows, run(root, rows, survey_probe))
    if args.output is not None:
        from omnispectra.fileio import write_text

        write_text(args.output.with_suffix(".json"), json.dumps(report, indent=1))
    emit(markdown(report), args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
