"""Helpers shared by the benchmark scripts: locating real spectra and timing."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path | None:
    env = os.environ.get("OMNISPECTRA_DATA_DIR")
    # absolute: benchmark children may run in another source tree (``--baseline-src``)
    path = (Path(env) if env else REPO.parent / "shared" / "data").resolve()
    return path if path.is_dir() else None


def sdss_spectra(limit: int = 64) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(wavelength, flux, ivar, bad) of up to ``limit`` real SDSS-I/II spectra (~3,850 px).

    Falls back to the bundled example when the shared data folder is absent.
    """
    from omnispectra.examples import example_path

    root = data_dir()
    files = sorted((root / "sdss").rglob("spec-*.fits")) if root else []
    out = []
    for path in files or [example_path("sdss")]:
        with fits.open(path) as hdul:
            c = hdul[1].data
            arrays = (10.0 ** c["loglam"].astype(float), c["flux"].astype(float),
                      c["ivar"].astype(float), c["and_mask"] != 0)
        if ((arrays[2] > 0) & ~arrays[3]).sum() >= 20:
            out.append(arrays)
    while len(out) < limit:
        out += out[: limit - len(out)]
    return out[:limit]


def best_time(fn, repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def emit(text: str, out: Path | None) -> None:
    """Print a benchmark's report and, with ``out``, write it there atomically."""
    if out is not None:
        from omnispectra.fileio import write_text

        write_text(out, text)
    print(text)
