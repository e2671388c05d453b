#!/usr/bin/env python
"""Train the stellar-parameter probe on MILES stars and on MILES stars observed through
real survey donors (issue #24), and measure it on held-out MILES, held-out engine stars per
grid and the real survey stars of ``benchmarks/stellar_survey_stars.csv`` (validation only).

Stages (each cached under ``--cache``, so a rerun resumes):

1. MILES stars present in the data folder (labels of ``miles/index.csv``; s0505 left out: it
   is the X-shooter validation star);
2. donors: real spectra of the SDSS/BOSS/eBOSS, LAMOST LRS, DESI and 6dFGS grids, training
   side of :mod:`omnispectra.splits`, never a file of the validation list; the LAMOST stars of
   the list with ``role == donor`` lend their grid and noise only (their labels are never read);
3. ``--per-star`` engine spectra per MILES star (:meth:`omnispectra.engine.Engine.sample_star`),
   each on a grid drawn uniformly, then a donor of that grid;
4. embeddings (bundled encoder) of MILES, engine and validation spectra; survey spectra are
   cut to MILES' range first (the probe's input window);
5. grouped 5-fold cross-validation by MILES star (:func:`omnispectra.splits.fold_of`, the
   folds of the shipped probe), recipes ``stellar_params_survey`` of
   ``configs/predictor_recipes.yaml``; MAE on held-out MILES next to PCA + ridge and 5-NN in
   PCA space trained on the same folds; per-grid scores of the held-out engine stars;
6. the refit probe with ``info["support_by_grid"]`` and ``info["input_window"]``, scored on the
   real survey stars with :func:`omnispectra.probes.stellar_domain_flags`.

Usage::

    OMP_NUM_THREADS=1 OMNISPECTRA_DATA_DIR=../shared/data python scripts/train_stellar_survey.py \\
        --cache /tmp/stars/cache -o /tmp/stars/probe --results benchmarks/results/stellar-survey
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MILES_WINDOW = (3541.5, 7411.6)
#: Grids the probe is trained for; SEGUE spectra use the SDSS spectrograph (the ``sdss`` grid).
GRIDS = ("sdss", "boss", "lamost_lrs", "desi", "6dfgs")
DONOR_FOLDERS = ("sdss", "lamost", "desi", "6dfgs")
GRID_OF = {"eboss": "boss", "segue": "sdss"}
logger = logging.getLogger("train_stellar_survey")


def _cached(cache: Path, name: str, compute):
    path = cache / f"{name}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    out = compute()
    np.savez(path, **out)
    return out


def donors(root: Path, validation: set[str]):
    from omnispectra.engine import donor_from_spectrum, select_side
    from omnispectra.io import iter_spectra

    files = [p for folder in DONOR_FOLDERS for p in sorted((root / folder).rglob("*.fits*"))
             if str(p.relative_to(root)) not in validation and "med-" not in p.name
             and "redrock" not in p.name and "stack" not in p.name]
    out = []
    for s in iter_spectra([str(p) for p in files], on_error="skip"):
        d = donor_from_spectrum(s)
        d.survey = GRID_OF.get(d.survey, d.survey)
        if d.survey in GRIDS and d.valid.sum() > 500:
            out.append(d)
    return select_side(out, "train")


def engine_set(root: Path, stars, per_star: int, validation: set[str], seed: int = 0,
               tilt_sigma: float = 0.1):
    from omnispectra.engine import Engine
    from omnispectra.engine.generator import EngineConfig
    from omnispectra.templates.library import load_library

    ds = donors(root, validation)
    library = load_library(root / "templates", redrock=["galaxy"], pyhammer=False)
    config = EngineConfig()
    config.observe.tilt_sigma = tilt_sigma
    engine = Engine(library, ds, config)
    engine.fit_responses([d for d in ds if d.labels.get("class") == "GALAXY"])
    by_grid = {g: [i for i, d in enumerate(ds) if d.survey == g] for g in GRIDS}
    logger.info("donors per grid: %s", {g: len(v) for g, v in by_grid.items()})
    grids = [g for g in GRIDS if by_grid[g]]
    samples = []
    for si, star in enumerate(stars):
        for k in range(per_star):
            rng = np.random.default_rng([seed, si, k])
            grid = grids[int(rng.integers(len(grids)))]
            di = by_grid[grid][int(rng.integers(len(by_grid[grid])))]
            samples.append((star.id, engine.sample_star(star, rng, donor_index=di)))
    return samples


def embed_arrays(items, model) -> np.ndarray:
    """Embeddings of ``(wave, flux, ivar)`` tuples, in chunks (logged)."""
    import omnispectra

    out = []
    for i in range(0, len(items), 64):
        out.append(np.asarray(omnispectra.embed(items[i:i + 64], model=model, progress=False)))
        logger.info("embedded %d / %d", min(i + 64, len(items)), len(items))
    return np.concatenate(out) if out else np.zeros((0, 256), np.float32)


def validation_rows(path: str) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def embed_all(args, cache: Path) -> dict:
    """Stages 1-4 (cached): labels, groups, grids and embeddings of every row."""
    import omnispectra
    from omnispectra import io

    root = Path(omnispectra.__file__).parents[1] / ".." / "shared" / "data"
    import os

    root = Path(os.environ.get("OMNISPECTRA_DATA_DIR", root))
    rows = validation_rows(args.stars_csv)
    model = omnispectra.load_model(args.model)
    from omnispectra.engine.labelled import miles_stars

    stars = miles_stars(root)

    def miles_part():
        items = [(s.wave, s.flux, np.ones_like(s.flux)) for s in stars]
        y = np.array([[s.labels["teff"], s.labels["logg"], s.labels["fe_h"]] for s in stars])
        flux = np.array([s.flux / np.mean(np.abs(s.flux)) for s in stars])
        return {"emb": embed_arrays(items, model), "y": y, "group": np.array([s.id for s in stars]),
                "flux": flux}

    def engine_part():
        held = {r["file"] for r in rows if r["role"] == "validation"}
        samples = engine_set(root, stars, args.per_star, held, tilt_sigma=args.tilt_sigma)
        items = [(e.wave, e.flux, np.where(e.mask, 0.0, e.ivar)) for _, e in samples]
        y = np.array([[e.labels["teff"], e.labels["logg"], e.labels["fe_h"]] for _, e in samples])
        ranges = np.array([[e.wave[(~e.mask) & (e.ivar > 0)].min(), e.wave[(~e.mask) & (e.ivar > 0)].max(),
                            np.median(e.wave[1:] / np.diff(e.wave))] for _, e in samples])
        return {"emb": embed_arrays(items, model), "y": y, "group": np.array([g for g, _ in samples]),
                "grid": np.array([e.meta["survey"] for _, e in samples]), "range": ranges}

    def survey_part():   # cut as the runtime cuts a star on a survey grid
        from omnispectra.inference.rows import windowed
        from omnispectra.spectrum import spectrum_data

        items, waves = [], []
        for r in rows:
            spec = io.read(root / r["file"])
            data = spectrum_data(spec[0] if isinstance(spec, list) else spec)
            items.append(windowed(data, MILES_WINDOW))
            waves.append(data.wavelength[~data.bad])
        lens = np.array([len(w) for w in waves])
        return {"emb": embed_arrays(items, model), "wave_flat": np.concatenate(waves), "wave_len": lens}

    out = {"miles": _cached(cache, "miles", miles_part)}
    tag = "" if args.tilt_sigma == 0.1 else f"-tilt{args.tilt_sigma}"
    out["engine"] = _cached(cache, f"engine{args.per_star}{tag}", engine_part)
    if args.use_per_star is not None:  # rows are star-major: row i is the (i % per_star)-th of its star
        keep = np.arange(len(out["engine"]["y"])) % args.per_star < args.use_per_star
        out["engine"] = {k: v[keep] for k, v in out["engine"].items()}
    out["survey"] = _cached(cache, "survey", survey_part)
    out["rows"], out["model"] = rows, model
    return out


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", default="/tmp/stars/cache", help="one cache folder per --model")
    p.add_argument("--model", default="default", help="encoder: 'default' or a weights file")
    p.add_argument("-o", "--output", default="/tmp/stars/probe", help="folder of the new probe")
    p.add_argument("--results", default=str(REPO / "benchmarks/results/stellar-survey"))
    p.add_argument("--stars-csv", default=str(REPO / "benchmarks/stellar_survey_stars.csv"))
    p.add_argument("--recipes", default=str(REPO / "configs/predictor_recipes.yaml"))
    p.add_argument("--recipe-set", default="stellar_params_survey")
    p.add_argument("--per-star", type=int, default=3)
    p.add_argument("--use-per-star", type=int, default=None,
                   help="use only the first N engine spectra of each star (of the cached --per-star)")
    p.add_argument("--tilt-sigma", type=float, default=0.1,
                   help="flux-calibration tilt of the engine stars (Legendre sigma; engine default 0.1)")
    p.add_argument("--steps-scale", type=float, default=1.0)
    p.add_argument("--stage", default="all", choices=["embed", "all"])
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    import warnings

    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(REPO / "scripts"))
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    data = embed_all(args, cache)
    if args.stage == "embed":
        return 0
    from stellar_survey_eval import evaluate

    print(json.dumps(evaluate(args, data), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
