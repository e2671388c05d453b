"""Out-of-fold validation of the default catalogue row by source group (issue #23).

``omnispectra train-predictors --groups configs/source_groups.csv --fold-probes`` trains, in
every round of its source-grouped cross-validation, a class probe on the other sources
(with a temperature and a template combination fitted on yet other sources) and writes it
with the round's evaluation rows into ``OUTPUT/folds/``. This script runs the real default
path on each round's files - ``omnispectra classify FILES --probe <round probe>`` (the full
row, as the CLI prints it), in a fresh process with ``$OMNISPECTRA_DOMAIN`` set to a
training domain whose embedding bank holds only the spectra that round's probe may have
seen - and scores the rows against the labels:

- class: pooled macro recall, recall per source group with Wilson 95% intervals, top-label
  ECE over 10 equal-count bins, the share wrong among ``p >= 0.95`` with ``class_flag == 0``,
  ``class_flag == 0`` among in-domain galaxies and quasars and among MILES and LAMOST stars;
- redshift: ``|dz| / (1 + z) < 0.0033`` among galaxies and quasars with ``z_flag == 0``, and
  the share with ``z_flag == 0``.

What stays in-sample: the encoder was pretrained on these spectra, and the domain's
fit-significance quantile and fit-residual anomaly threshold were measured on all of them
(its grids, embedding bank and neighbour threshold are remade per round without the
round's spectra).

Usage (about 25 min on 2 cores)::

    python benchmarks/source_validation.py RUN_FOLDER CORPUS.h5 ... -o benchmarks/results/source-validation
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from omnispectra.flags import CLASSES, Flag
from omnispectra.training.predictors.crossval import (
    CONFIDENT,
    MIN_GROUP_ROWS,
    group_recalls,
    interval,
    recall_report,
)

logger = logging.getLogger("source_validation")

#: The redshift tolerance of the issue, |dz| / (1 + z).
Z_TOLERANCE = 0.0033
OUT_OF_DOMAIN = int(Flag.OUT_OF_DOMAIN)


def round_domains(folds: dict, corpus: list[str], work: Path) -> list[Path]:
    """Per round, the training domain of what the round's probe may have seen: grids, the
    embedding bank and its neighbour threshold from every labelled spectrum but the round's
    evaluation spectra (the fit-significance quantile and the fit-residual anomaly threshold
    stay the bundled ones: measuring them takes a template fit of every spectrum)."""
    from omnispectra import domain as domains
    from omnispectra.domain import TrainingDomain, load_domain
    from omnispectra.evaluation.harness import TASKS, compute_embeddings, load_labeled
    from omnispectra.runtime import resolve_model
    from omnispectra.training.domain import TrainingSpectrum, grid_ranges, neighbour_threshold

    bundled = load_domain(Path(domains.__file__).parent / "data" / domains.DOMAIN_FILE)
    data = load_labeled(corpus, [TASKS["source_class"]], max_per_dataset=10**9)
    emb = compute_embeddings(data, resolve_model("default", "cpu"), batch_size=32)
    meta = data.meta
    ids = np.asarray(meta["id"], dtype=str)
    spectra = [TrainingSpectrum(ids[i], str(meta["survey"][i]), str(meta["object_id"][i]), "",
                                data.dataset.spectrum(int(data.positions[i]))) for i in range(ids.size)]
    paths = []
    for r in folds["rounds"]:
        seen = ~np.isin(ids, [row["id"] for row in r["evaluation"]])
        kept = [spectra[i] for i in np.flatnonzero(seen)]
        threshold, _ = neighbour_threshold(emb[seen], [s.group for s in kept], bundled.k)
        grids = grid_ranges(kept)
        info = {**bundled.info, "bank": f"labelled spectra of the other rounds than {r['round']}"}
        path = work / f"round-{r['round']}" / "training-domain.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        TrainingDomain(grids, emb[seen], threshold, bundled.k, bundled.significance_min, info,
                       residual_max=bundled.residual_max).save(path)
        logger.info("round %d: domain of %d spectra (%d held out), grids %s, neighbour threshold %.3f",
                    r["round"], seen.sum(), (~seen).sum(), sorted(grids), threshold)
        paths.append(path)
    return paths


def classify_round(run: Path, r: dict, domain: Path, out: Path) -> Path:
    """``omnispectra classify`` of the round's files with its probe and domain (skipped when done)."""
    table = out / f"round-{r['round']}.ecsv"
    if table.is_file():
        return table
    files = sorted({row["source_file"] for row in r["evaluation"]})
    cmd = [sys.executable, "-m", "omnispectra.cli", "-q", "classify", *files, "--probe",
           str(run / "folds" / r["probe"]), "-o", str(table), "--no-table"]
    env = {**os.environ, "OMNISPECTRA_DOMAIN": str(domain)}
    logger.info("round %d: classify %d files", r["round"], len(files))
    subprocess.run(cmd, check=True, env=env)
    return table


def share(mask: np.ndarray, within: np.ndarray) -> dict:
    """:func:`~omnispectra.training.predictors.crossval.interval` of ``mask`` among ``within``."""
    return interval(int((mask & within).sum()), int(within.sum()))


def joined_rows(tables: list[Path], folds: dict) -> dict[str, np.ndarray]:
    """Labels and catalogue columns of every labelled row found in the catalogues."""
    from astropy.table import Table, vstack

    cat = vstack([Table.read(t) for t in tables], metadata_conflicts="silent")
    index = {str(i): k for k, i in enumerate(cat["id"])}
    labels = [row for r in folds["rounds"] for row in r["evaluation"]]
    found = [row for row in labels if row["id"] in index]
    if len(found) < len(labels):
        logger.warning("%d labelled rows have no catalogue row", len(labels) - len(found))
    at = np.asarray([index[row["id"]] for row in found], dtype=np.int64)
    out = {k: np.asarray([row[k] for row in found]) for k in ("id", "survey", "class", "group")}
    out["z_true"] = np.asarray([row["z"] for row in found], dtype=np.float64)
    out["pred"] = np.asarray(cat["class"][at]).astype(str)
    out["prob"] = np.stack([np.asarray(cat[f"prob_{c}"][at], dtype=np.float64) for c in CLASSES], axis=1)
    for c in ("z", "class_flag", "z_flag"):
        out[c] = np.asarray(cat[c][at])
    return out


def class_scores(rows: dict[str, np.ndarray]) -> dict:
    """The class figures of the issue's done-when list."""
    from omnispectra.evaluation.calibration import expected_calibration_error

    y, pred, flag = rows["class"], rows["pred"], rows["class_flag"].astype(np.int64)
    right = pred == y
    truth = np.asarray([CLASSES.index(c) for c in y])
    chosen = np.asarray([CLASSES.index(c) if c in CLASSES else -1 for c in pred])
    pooled = recall_report(truth, chosen, CLASSES)
    groups = group_recalls(truth, chosen, rows["group"], CLASSES)["groups"]
    sure_clean = (rows["prob"].max(1) >= CONFIDENT) & (flag == 0)
    extragalactic = np.isin(y, ("GALAXY", "QSO"))
    in_domain = (flag & OUT_OF_DOMAIN) == 0
    return {
        "n": int(y.size), "recall": pooled["recall"], "macro_recall": pooled["macro_recall"],
        "groups": groups,
        "worst_group_wilson_low": min(((v["accuracy"]["wilson95"][0], g) for g, v in groups.items()
                                       if v["accuracy"]["n"] >= MIN_GROUP_ROWS),
                                      default=(float("nan"), "none")),
        "ece_10_equal_count": expected_calibration_error(rows["prob"], truth, 10, equal_count=True),
        "ece_10_equal_count_surveys": expected_calibration_error(
            rows["prob"][rows["survey"] != "miles"], truth[rows["survey"] != "miles"], 10, equal_count=True),
        "wrong_among_confident_flag0": share(~right, sure_clean),
        "class_flag0_in_domain_galaxy_qso": share(flag == 0, extragalactic & in_domain),
        "class_flag0_galaxy_qso": share(flag == 0, extragalactic),
        "class_flag0_lamost_stars": share(flag == 0, (y == "STAR") & np.isin(rows["survey"],
                                                                             ("lamost_lrs", "lamost_mrs"))),
        # MILES is one source: left out, no other library holds its grid (OUT_OF_DOMAIN by design)
        "class_flag0_miles_stars": share(flag == 0, (y == "STAR") & (rows["survey"] == "miles")),
    }


def redshift_scores(rows: dict[str, np.ndarray]) -> dict:
    """Among galaxies and quasars with a z label: z_flag 0 share and accuracy."""
    extragalactic = np.isin(rows["class"], ("GALAXY", "QSO")) & np.isfinite(rows["z_true"])
    z = np.asarray(rows["z"], dtype=np.float64)
    good = np.abs(z - rows["z_true"]) / (1 + rows["z_true"]) < Z_TOLERANCE
    clean = extragalactic & (rows["z_flag"].astype(np.int64) == 0)
    return {"z_flag0": share(clean, extragalactic), "within_tolerance_of_z_flag0": share(good, clean),
            "within_tolerance_all": share(good, extragalactic), "tolerance": Z_TOLERANCE}


def markdown(scores: dict, command: str) -> str:
    c, z = scores["class"], scores["redshift"]

    def pct(s: dict) -> str:
        return f"{s['k']}/{s['n']} = {s['value']:.3f} [{s['wilson95'][0]:.3f}, {s['wilson95'][1]:.3f}]"

    lines = ["# Default catalogue row, out of fold by source group", "", f"Command: `{command}`", "",
             "| figure | measured |", "|---|---|",
             f"| pooled macro recall | {c['macro_recall']:.3f} |",
             *[f"| recall {k} | {pct(v)} |" for k, v in c["recall"].items()],
             f"| worst Wilson lower bound (groups >= {MIN_GROUP_ROWS}) | "
             f"{c['worst_group_wilson_low'][0]:.3f} ({c['worst_group_wilson_low'][1]}) |",
             f"| top-label ECE, 10 equal-count bins (all / survey spectra) | {c['ece_10_equal_count']:.3f} / "
             f"{c['ece_10_equal_count_surveys']:.3f} |",
             f"| wrong among p >= 0.95 and class_flag 0 | {pct(c['wrong_among_confident_flag0'])} |",
             f"| class_flag 0, in-domain galaxies + quasars | {pct(c['class_flag0_in_domain_galaxy_qso'])} |",
             f"| class_flag 0, all galaxies + quasars | {pct(c['class_flag0_galaxy_qso'])} |",
             f"| class_flag 0, LAMOST stars | {pct(c['class_flag0_lamost_stars'])} |",
             f"| class_flag 0, MILES stars (left out: no other source has their grid) | "
             f"{pct(c['class_flag0_miles_stars'])} |",
             f"| z_flag 0, galaxies + quasars | {pct(z['z_flag0'])} |",
             f"| within {Z_TOLERANCE} among z_flag 0 | {pct(z['within_tolerance_of_z_flag0'])} |",
             "", "| source group | n | GALAXY/QSO/STAR | accuracy [Wilson 95%] | macro recall |",
             "|---|---|---|---|---|"]
    for g, v in c["groups"].items():
        counts = "/".join(str(v["recall"][k]["n"]) for k in CLASSES)
        lines.append(f"| {g} | {v['accuracy']['n']} | {counts} | {pct(v['accuracy'])} "
                     f"| {v['macro_recall']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="output folder of train-predictors --fold-probes")
    parser.add_argument("corpus", nargs="+", help="the corpus files the run was trained on")
    parser.add_argument("-o", "--out", type=Path, default=Path("benchmarks/results/source-validation"),
                        help="OUT.md and OUT.json; the rounds' domains and catalogues go to OUT.work/ "
                             "(kept: a rerun reuses finished rounds)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    from omnispectra.fileio import write_text

    folds = json.loads((args.run / "folds" / "folds.json").read_text())
    work = args.out.with_suffix(".work")
    domains = round_domains(folds, args.corpus, work)
    tables = [classify_round(args.run, r, d, work) for r, d in zip(folds["rounds"], domains, strict=True)]
    rows = joined_rows(tables, folds)
    given = argv if argv is not None else sys.argv[1:]
    command = "python benchmarks/source_validation.py " + " ".join(  # no machine paths in the record
        os.path.relpath(a) if os.path.isabs(a) else a for a in given)
    scores = {"command": command, "class": class_scores(rows), "redshift": redshift_scores(rows)}
    write_text(args.out.with_suffix(".json"), json.dumps(scores, indent=1, default=float) + "\n")
    write_text(args.out.with_suffix(".md"), markdown(scores, command))
    print(markdown(scores, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
