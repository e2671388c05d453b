#!/usr/bin/env python
"""List the real survey stars of the shared data that can validate the stellar probe.

Validation only, never training (issue #24): every A-M star of LAMOST LRS, SDSS/SEGUE/BOSS
and X-shooter in ``../shared/data`` whose valid pixels overlap MILES' range (3,541-7,412 A)
by at least 1,500 A, with a reference Teff:

* ``pylasp``: the PyLASP re-fit of the LAMOST DR10 stars (``LASP_Adam_inferred.csv``, Teff);
* ``miles``: the MILES catalogue Teff of the same star (X-shooter BD+01 2916 = MILES s0505);
* ``spectral_type``: the survey's spectral type (LAMOST 1D pipeline, SDSS/SEGUE SUBCLASS,
  BOSS ELODIE type) converted with the dwarf Teff scale of Pecaut & Mamajek (2013, ApJS 208,
  9, Table 5; values of E. Mamajek's online version of that table,
  ``EEM_dwarf_UBVIJHK_colors_Teff.txt``), half types interpolated. Giants (luminosity class
  I-III) keep the dwarf value, noted in ``note``: for A-F types the giant scale differs by a
  few per cent only.

White dwarfs, CVs, O/B, carbon and L types are left out (MILES has too few or none).
``in_scope`` is ``yes`` where the grid is one the stellar probe is trained for (R <= MILES'),
``sharper`` for X-shooter (R ~ 9000: to be convolved to MILES' resolution first).

``role``: every LAMOST LRS file of the shared data is a star of this list, and the engine
needs LAMOST donors (grid, noise, mask; never their labels). Half of the LAMOST stars, by
the project's object hash (:func:`omnispectra.splits.is_validation` with fraction 0.5,
seed 0), are ``donor``; the others and every other star are ``validation``. Donors are
never scored, validation stars never lend anything to training.

Usage::

    OMNISPECTRA_DATA_DIR=../shared/data python benchmarks/stellar_survey_stars.py \\
        -o benchmarks/stellar_survey_stars.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import data_dir  # noqa: E402

from omnispectra.templates.spectral_types import type_teff  # noqa: E402

MILES_RANGE = (3541.5, 7411.6)
MIN_OVERLAP = 1500.0
FIELDS = ["file", "survey", "object_id", "spectral_type", "teff_ref", "teff_source", "overlap_lo",
          "overlap_hi", "in_scope", "role", "note"]


def _overlap(path: Path) -> tuple[float, float]:
    from omnispectra import io
    from omnispectra.tokenizer import spectrum_arrays

    spec = io.read(path)
    spec = spec[0] if isinstance(spec, list) else spec
    wave, flux, ivar, bad = spectrum_arrays(spec)
    w = wave[(~bad) & (ivar > 0) & np.isfinite(flux)]
    lo, hi = max(float(w.min()), MILES_RANGE[0]), min(float(w.max()), MILES_RANGE[1])
    return (lo, hi), str(spec.meta.get("survey")), str(spec.meta.get("object_id"))


def _candidates(root: Path) -> list[tuple[str, str, float | None, str, str]]:
    """(file, spectral type, catalogue Teff or None, Teff source, note) of every star."""
    rows = []
    with open(root / "lamost/pylasp/LASP_Adam_inferred.csv") as fh:
        pylasp = {r["ID"]: float(r["pred_Teff"]) for r in csv.DictReader(fh)}
    for index in ("lamost/pylasp/index.csv", "lamost/dr1/index.csv", "lamost/dr3/index.csv"):
        for r in csv.DictReader(open(root / index)):
            if r["CLASS"] == "STAR":
                teff = pylasp.get(Path(r["file"]).name)
                rows.append((r["file"], r["SUBCLASS"], teff, "pylasp" if teff else "spectral_type", ""))
    for r in csv.DictReader(open(root / "lamost/index.csv")):
        if r["kind"] == "LRS" and r["CLASS"] == "STAR":
            rows.append((r["file"], r["SUBCLASS"], None, "spectral_type", ""))
    for r in csv.DictReader(open(root / "sdss/more/index.csv")):
        if r["CLASS"] == "STAR":
            rows.append((r["file"], r["SUBCLASS"], None, "spectral_type", ""))
    for r in csv.DictReader(open(root / "sdss/squeze/index.csv")):
        if r["CLASS"] == "STAR":  # visual-inspection class; the type is the pipeline's ELODIE match
            rows.append((r["file"], r["pipe_SUBCLASS"], None, "spectral_type", "BOSS ELODIE type"))
    for r in csv.DictReader(open(root / "sdss/index.csv")):
        if r["CLASS"] == "STAR" and "NGC3073" not in r["file"]:  # NGC 3073 is a dwarf galaxy
            rows.append((r["file"], r["SUBCLASS"], None, "spectral_type", ""))
    rows.append(("xshooter/xsl_spectrum_X0360_uvb.fits", "", 4238.0, "miles", "MILES s0505 (same star)"))
    return rows


def survey_stars(root: Path) -> list[dict]:
    """The validation rows (see the module docstring)."""
    out = []
    for file, subclass, teff, source, note in _candidates(root):
        type_t, lum = type_teff(subclass)
        if teff is None and type_t is None:
            continue
        (lo, hi), survey, obj = _overlap(root / file)
        if hi - lo < MIN_OVERLAP:
            continue
        if lum in ("I", "II", "III") and source == "spectral_type":
            note = "; ".join(filter(None, [note, f"luminosity class {lum}: dwarf scale"]))
        out.append({"file": file, "survey": survey, "object_id": obj, "spectral_type": subclass,
                    "teff_ref": round(teff if teff is not None else type_t, 1), "teff_source": source,
                    "overlap_lo": round(lo, 1), "overlap_hi": round(hi, 1),
                    "in_scope": "sharper" if survey == "xshooter" else "yes", "note": note})
    from omnispectra import splits

    val = splits.is_validation([r["object_id"] for r in out], fraction=0.5, seed=0)
    for r, v in zip(out, val, strict=True):
        r["role"] = "donor" if r["survey"] == "lamost_lrs" and not v else "validation"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", default="benchmarks/stellar_survey_stars.csv")
    args = parser.parse_args(argv)
    root = data_dir()
    if root is None:
        raise SystemExit("no shared data folder (set OMNISPECTRA_DATA_DIR)")
    rows = survey_stars(root)
    with open(args.output, "w", newline="") as fh:
        w = csv.DictWriter(fh, FIELDS)
        w.writeheader()
        w.writerows(rows)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["survey"]] = counts.get(r["survey"], 0) + 1
    print(f"{len(rows)} stars -> {args.output}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
