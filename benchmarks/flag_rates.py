"""How often the catalogue row's flags are 0 on real labelled spectra, per survey.

``python benchmarks/flag_rates.py DATA_DIR [--per-survey N] -o benchmarks/results/flag_rates.ecsv``

Runs ``omnispectra.classify(full=True)`` (the default path: probe joined with the bundled
templates, the stored training domain) on up to N labelled spectra of each survey folder
and reports, per survey and class, the fraction with ``class_flag == 0``, the class recall
among them, and for galaxies/quasars the fraction with ``z_flag == 0`` and how many of those
are within 0.0033 of the survey's redshift. The spectra are those the predictors were trained
and the domain was measured on, so the fractions are optimistic for unseen data.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path


def labelled(data: Path, per_survey: int) -> list:
    from omnispectra.flags import CLASSES
    from omnispectra.io import iter_spectra

    chosen: dict[str, list] = defaultdict(list)
    for spec in iter_spectra(data, on_error="skip"):
        meta = spec.meta or {}
        cls = str(meta.get("class", "")).upper()
        survey = str(meta.get("survey", ""))
        if cls in CLASSES and len(chosen[survey]) < per_survey:
            chosen[survey].append(spec)
    return [s for group in chosen.values() for s in group]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--per-survey", type=int, default=60)
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args(argv)

    import omnispectra
    from omnispectra.evaluation.stats import wilson_interval
    from omnispectra.results import write_table

    spectra = labelled(args.data, args.per_survey)
    table = omnispectra.classify(spectra, full=True, on_error="skip", progress=False)
    truth = {str(s.meta["id"]): s.meta for s in spectra}
    rows = defaultdict(lambda: [0, 0, 0, 0, 0])  # n, class_flag 0, right among those, z n, z ok
    for row in table:
        meta = truth.get(str(row["id"]), {})
        key = (str(row["survey"]), str(meta.get("class", "")).upper())
        r = rows[key]
        r[0] += 1
        if row["class_flag"] == 0:
            r[1] += 1
            r[2] += int(row["class"] == key[1])
        if key[1] in ("GALAXY", "QSO") and meta.get("z") is not None and row["z_flag"] == 0:
            r[3] += 1
            r[4] += int(abs(row["z"] - float(meta["z"])) / (1 + float(meta["z"])) < 0.0033)
    lines = [f"{'survey':<12} {'class':<7} {'n':>4}  class_flag 0          right | flag 0   z_flag 0   z ok"]
    for (survey, cls), (n, c0, right, zn, zok) in sorted(rows.items()):
        lo, hi = wilson_interval(c0, n)
        lines.append(f"{survey:<12} {cls:<7} {n:>4}  {c0:>4} = {c0 / n:.3f} [{lo:.2f}, {hi:.2f}]  "
                     f"{right:>4}/{c0:<4}  {zn:>4}  {zok:>4}")
    sys.stdout.write("\n".join(lines) + "\n")
    if args.output:
        write_table(table, args.output, overwrite=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
