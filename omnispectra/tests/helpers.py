"""Shared test helpers: locating the real data folder and loading real SDSS spectra."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import threading
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from astropy.io import fits

from omnispectra.examples import example_path

REPO = Path(__file__).resolve().parents[2]
TINY_DIM = 32  # width of the tiny random model of the ``model`` fixture (conftest.py)


def data_dir() -> Path | None:
    """The shared real-data folder, or None when absent."""
    env = os.environ.get("OMNISPECTRA_DATA_DIR")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


def require_data_dir() -> Path:
    """The shared real-data folder; skips the calling test when absent."""
    path = data_dir()
    if path is None:
        pytest.skip("real spectra folder ../shared/data is absent (set OMNISPECTRA_DATA_DIR)")
    return path


def load_script(path: Path, name: str) -> ModuleType:
    """Import a script or benchmark file (not part of the package) by path; skips when absent."""
    if not path.is_file():
        pytest.skip(f"{path.relative_to(REPO)} is not part of this checkout or installed package")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sdss_arrays(path: Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(wavelength, flux, ivar, bad) of an SDSS ``spec`` file (the bundled example by default)."""
    with fits.open(path or example_path("sdss")) as hdul:
        coadd = hdul[1].data
        return (10.0 ** coadd["loglam"].astype(np.float64), coadd["flux"].astype(np.float64),
                coadd["ivar"].astype(np.float64), coadd["and_mask"] != 0)


def real_sdss_files(limit: int = 8) -> list[Path]:
    """Up to ``limit`` real SDSS spectra from the shared data folder (skips when absent)."""
    root = require_data_dir()
    files = sorted((root / "sdss").rglob("spec-*.fits"))[:limit]
    if not files:
        pytest.skip("no SDSS spectra in the shared data folder")
    return files


class LoopbackServer:
    """An HTTP server on 127.0.0.1 over a folder that records the requested paths (no internet)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server API)
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):  # keep the test output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join(5)
        self.httpd.server_close()


def write_rrtemplate(path: Path, basis: np.ndarray | None = None, **header) -> Path:
    """A Redrock ``rrtemplate`` FITS file: ``basis`` (default a constant, a slope and a sine over
    2000 pixels) with ``RRTYPE=GALAXY``, ``CRVAL1=3000``, ``CDELT1=2`` (linear Angstrom) unless
    ``header`` changes them (a value of None drops the key)."""
    if basis is None:
        x = np.linspace(0.0, 1.0, 2000)
        basis = np.array([np.ones_like(x), x, np.sin(7.0 * x)])
    values = {"RRTYPE": "GALAXY", "RRSUBTYP": "", "CRVAL1": 3000.0, "CDELT1": 2.0, **header}
    path.parent.mkdir(parents=True, exist_ok=True)
    cards = fits.Header({k: v for k, v in values.items() if v is not None})
    fits.PrimaryHDU(basis, header=cards).writeto(path, overwrite=True)
    return path
