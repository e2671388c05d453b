#!/usr/bin/env python
"""Teff from the nearest empirical composite: a spectral-fit reference for the stellar probe.

Issue #24 asks whether a spectral-fit prior could help the stellar probe on survey stars.
This measures the plainest one, with no network: each star is fitted by every PyHammer
composite of the shared templates (BOSS co-adds of one spectral type, A0-M6) times a
Legendre polynomial of ``n_poly`` terms (flux calibration), weighted by the pixels' inverse
variance where the file has one; the composite with the lowest chi-square gives the Teff of
its spectral type on the dwarf scale (:func:`omnispectra.templates.spectral_types.type_teff`).

The polynomial order is chosen on the ``donor`` stars of ``benchmarks/stellar_survey_stars.csv``
(training side; the most within 12%, ties to fewer terms) and then reported on the
``validation`` stars, per survey, next to MILES (catalogue Teff, 3,000-9,700 K: the range of
the composites' scale).

With ``--probe`` (a survey-star probe written by ``scripts/train_stellar_survey.py -o DIR``) and
``--survey-embeddings`` (that run's ``CACHE/survey.npz``: the star list's embeddings, in its
order), the probe's Teff and its ensemble with the composite's, ``w log Teff_probe + (1 - w) log
Teff_composite`` with ``w`` chosen on the donor stars, are reported on the same stars.

Usage (about 2 min per order on one core)::

    OMNISPECTRA_DATA_DIR=../shared/data python benchmarks/stellar_composite_fit.py \\
        --orders 1 2 3 4 6 -o benchmarks/results/stellar-composite-fit.md
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from _common import data_dir, emit
from numpy.polynomial import legendre

from omnispectra import io
from omnispectra.engine.labelled import miles_stars
from omnispectra.fileio import write_text
from omnispectra.spectrum import spectrum_arrays
from omnispectra.templates.library import TemplateBasis, load_pyhammer
from omnispectra.templates.spectral_types import type_teff

STARS = Path(__file__).with_name("stellar_survey_stars.csv")
#: Outer limits of the fitted range (the composites' BOSS coverage starts near 3,650 A); a survey
#: star is fitted over its overlap with MILES' range (the list's overlap_lo/hi), as the probe sees it.
FIT_RANGE = (3700.0, 9000.0)
#: MILES stars are scored where the composites' spectral types reach.
TEFF_RANGE = (3000.0, 9700.0)
WITHIN = 0.12


def composites(root: Path) -> list[tuple[TemplateBasis, float]]:
    """The PyHammer composites whose spectral type has a dwarf-scale Teff."""
    out = []
    for path in sorted((root / "templates" / "pyhammer").glob("*.fits*")):
        template = load_pyhammer(path)
        teff, _ = type_teff(template.subtype)
        if teff is not None:
            out.append((template, float(teff)))
    return out


def nearest_teff(wave: np.ndarray, flux: np.ndarray, ivar: np.ndarray,
                 library: list[tuple[TemplateBasis, float]], n_poly: int) -> float:
    """Teff of the composite that, times a Legendre polynomial of ``n_poly`` terms, fits best."""
    x = 2 * (wave - wave[0]) / (wave[-1] - wave[0]) - 1
    poly = legendre.legvander(x, n_poly - 1)
    weight = np.sqrt(ivar)
    best = (np.inf, float("nan"))
    for template, teff in library:
        model = np.interp(wave, 10 ** template.loglam, template.basis[0], left=np.nan, right=np.nan)
        if np.isnan(model).mean() > 0.05:          # the composite must cover the fitted range
            continue
        design = np.nan_to_num(model)[:, None] * poly * weight[:, None]
        coeff, *_ = np.linalg.lstsq(design, flux * weight, rcond=None)
        chi2 = float(np.sum((flux * weight - design @ coeff) ** 2))
        best = min(best, (chi2, teff))
    return best[1]


def fit_range(wave: np.ndarray, flux: np.ndarray, ivar: np.ndarray, lo: float, hi: float):
    """Valid pixels inside both ``[lo, hi]`` and :data:`FIT_RANGE`; flux scaled to a unit median."""
    keep = np.isfinite(flux) & (ivar > 0) & (wave > max(lo, FIT_RANGE[0])) & (wave < min(hi, FIT_RANGE[1]))
    scale = np.median(np.abs(flux[keep])) or 1.0
    return wave[keep], flux[keep] / scale, ivar[keep] * scale ** 2


def survey_rows(root: Path) -> list[dict]:
    """The in-scope stars of the committed list, with their arrays."""
    rows = []
    with open(STARS) as fh:
        for index, r in enumerate(csv.DictReader(fh)):
            r["index"] = index
            if r["in_scope"] != "yes":
                continue
            spec = io.read(root / r["file"])
            wave, flux, ivar, bad = spectrum_arrays(spec[0] if isinstance(spec, list) else spec)
            ivar = np.where(bad, 0.0, ivar)
            r["arrays"] = fit_range(wave, flux, ivar, float(r["overlap_lo"]), float(r["overlap_hi"]))
            rows.append(r)
    return rows


def miles_rows(root: Path) -> list[dict]:
    """MILES stars in the composites' Teff range (no uncertainties: unit weights)."""
    rows = []
    for star in miles_stars(root):
        teff = star.labels["teff"]
        if TEFF_RANGE[0] < teff < TEFF_RANGE[1]:
            flux = star.flux
            rows.append({"survey": "miles", "role": "validation", "teff_ref": teff,
                         "arrays": fit_range(star.wave, flux, (flux > 0).astype(float), *FIT_RANGE)})
    return rows


def score(rows: list[dict], teffs: list[float]) -> dict[str, dict[str, list]]:
    """Per role and survey: within-12% booleans and absolute errors (K) of ``teffs``, the rows' fits."""
    out: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r, teff in zip(rows, teffs, strict=True):
        ref = float(r["teff_ref"])
        for survey in {r["survey"], "all surveys" if r["survey"] != "miles" else "miles"}:
            out[r["role"]][survey].append((abs(teff / ref - 1) < WITHIN, abs(teff - ref)))
    return out


#: Weights of the probe's log Teff tried in the ensemble (0: the composite alone, 1: the probe alone).
PROBE_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def ensemble(rows: list[dict], teffs: list[float], probe_path: Path, embeddings: Path) -> list[str]:
    """Report lines: within 12% per survey of the probe, the composite (``teffs``, the rows' fits)
    and their log-Teff mix, the probe's weight chosen on the donor stars (the most within 12%,
    ties to the probe)."""
    from omnispectra.probes import load_probe

    star = [r["survey"] != "miles" for r in rows]
    stars = [r for r, keep in zip(rows, star, strict=True) if keep]
    with np.load(embeddings, allow_pickle=False) as z:
        emb = z["emb"][[r["index"] for r in stars]]
    probe_teff = load_probe(probe_path).predict(emb)[:, 0]
    composite = np.asarray(teffs)[star]
    ref = np.array([float(r["teff_ref"]) for r in stars])
    role = np.array([r["role"] for r in stars])
    survey = np.array([r["survey"] for r in stars])

    def hits(w: float) -> np.ndarray:
        teff = np.exp(w * np.log(probe_teff) + (1 - w) * np.log(composite))
        return np.abs(teff / ref - 1) < WITHIN

    chosen = max(PROBE_WEIGHTS, key=lambda w: (int(hits(w)[role == "donor"].sum()), w))
    names = sorted(set(survey[role == "validation"].tolist()))
    lines = ["", f"Ensemble with the probe `{probe_path.name}` (weight of its log Teff chosen on the donor "
             f"stars: {chosen}):", "",
             "| probe weight | donors | " + " | ".join(f"validation {s}" for s in names)
             + " | validation all |", "|---" * (len(names) + 3) + "|"]
    for w in PROBE_WEIGHTS:
        h = hits(w)
        cells = [h[role == "donor"], *(h[(role == "validation") & (survey == s)] for s in names),
                 h[role == "validation"]]
        lines.append(f"| {w}{' (chosen)' if w == chosen else ''} | "
                     + " | ".join(fraction(c) for c in cells) + " |")
    return lines


def fraction(hits: Any) -> str:
    """``k/n = share`` of a sequence of booleans."""
    k, n = int(np.sum(hits)), len(hits)
    return f"{k}/{n} = {k / n:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, nargs="+", default=[1, 2, 3, 4, 6],
                        help="Legendre terms to try (the donors choose)")
    parser.add_argument("--probe", type=Path, help="survey-star probe (scripts/train_stellar_survey.py)")
    parser.add_argument("--survey-embeddings", type=Path, help="its run's CACHE/survey.npz")
    parser.add_argument("-o", "--out", type=Path, help="markdown report (a .json beside it)")
    args = parser.parse_args(argv)
    root = data_dir()
    if root is None:
        raise SystemExit("set OMNISPECTRA_DATA_DIR to the shared data folder")
    library = composites(root)
    rows = survey_rows(root) + miles_rows(root)
    teffs = {n: [nearest_teff(*r["arrays"], library, n) for r in rows] for n in args.orders}
    results = {n: score(rows, teffs[n]) for n in args.orders}
    chosen = max(args.orders, key=lambda n: (sum(p[0] for p in results[n]["donor"]["all surveys"]), -n))
    surveys = sorted(results[chosen]["validation"])
    lines = [f"# Teff of the nearest PyHammer composite ({len(library)} composites)", "",
             f"Legendre terms chosen on the donor stars: {chosen}. "
             f"Within {WITHIN:.0%} of the reference Teff:", "",
             "| terms | donors (all) | " + " | ".join(f"validation {s}" for s in surveys)
             + " | MILES MAE (K) |",
             "|---" * (len(surveys) + 3) + "|"]
    for n in args.orders:
        r = results[n]
        mae = np.mean([p[1] for p in r["validation"]["miles"]]) if r["validation"]["miles"] else float("nan")
        hits = {s: [p[0] for p in v] for s, v in r["validation"].items()}
        lines.append(f"| {n}{' (chosen)' if n == chosen else ''} | "
                     f"{fraction([p[0] for p in r['donor']['all surveys']])} | "
                     + " | ".join(fraction(hits[s]) for s in surveys) + f" | {mae:.0f} |")
    if args.probe is not None:
        if args.survey_embeddings is None:
            parser.error("--probe needs --survey-embeddings")
        lines += ensemble(rows, teffs[chosen], args.probe, args.survey_embeddings)
    emit("\n".join(lines) + "\n", args.out)
    if args.out:
        summary = {n: {role: {s: [int(sum(p[0] for p in v)), len(v), float(np.mean([p[1] for p in v]))]
                              for s, v in by.items()} for role, by in results[n].items()}
                   for n in args.orders}
        write_text(args.out.with_suffix(".json"),
                   json.dumps({"chosen": chosen, "results": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
