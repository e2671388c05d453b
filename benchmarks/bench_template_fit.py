"""Template fit speed: per-spectrum ``RedshiftFitter.fit`` against the batched ``redshift_batch.fit_many``.

Both fit the same real SDSS/BOSS/eBOSS ``spec-*.fits`` spectra (``--n``, first in sorted order
under ``<data>/sdss``, repeated if fewer) side by side in one run with the Redrock templates of
``<data>/templates``; reports spectra/s of each, the agreement (class where deltachi2 > 9 in both,
``|dz| < 1e-5``, deltachi2 within 1%) and the peak-RSS growth of the batched fit per spectrum.
Redrock is not timed here (not installed in this environment).

Usage::

    OMNISPECTRA_DATA_DIR=DIR OMP_NUM_THREADS=2 python benchmarks/bench_template_fit.py [--n 32]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's omnispectra
from _common import data_dir, sdss_spectra  # noqa: E402

from omnispectra.fileio import atomic_write  # noqa: E402
from omnispectra.redshift import RedshiftFitter  # noqa: E402
from omnispectra.redshift_batch import fit_many  # noqa: E402


def agree(a, b) -> bool:
    same_class = a.spectype == b.spectype or not (a.deltachi2 > 9 and b.deltachi2 > 9)
    return same_class and abs(a.z - b.z) < 1e-5 and abs(a.deltachi2 - b.deltachi2) <= 0.01 * abs(a.deltachi2)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "template-fit-cpu.json"))
    args = parser.parse_args(argv)
    root = data_dir()
    if root is None:
        raise SystemExit("no shared data folder (set OMNISPECTRA_DATA_DIR)")
    fitter = RedshiftFitter(directory=root / "templates")
    spectra = [tuple(s) for s in sdss_spectra(args.n)]
    fit_many(fitter, spectra[:args.batch_size], batch_size=args.batch_size)   # warm-up: template caches
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    many = fit_many(fitter, spectra, batch_size=args.batch_size)
    t_many = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    single = [fitter.fit(*s) for s in spectra]
    t_single = time.perf_counter() - t0
    out = {"n_spectra": len(spectra), "batch_size": args.batch_size,
           "threads": os.environ.get("OMP_NUM_THREADS"),
           "per_spectrum_fit_spectra_per_s": len(spectra) / t_single,
           "fit_many_spectra_per_s": len(spectra) / t_many, "speedup": t_single / t_many,
           "agree": sum(agree(a, b) for a, b in zip(single, many, strict=True)),
           "peak_rss_growth_mb_per_spectrum": (rss1 - rss0) / 1024 / args.batch_size,
           "redrock": "not importable here (not timed)"}
    print(json.dumps(out, indent=1))
    with atomic_write(args.out) as tmp:
        Path(tmp).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
