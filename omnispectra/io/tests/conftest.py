"""Fixtures for the io tests: the real-data folder and tiny synthetic files in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

REPO = Path(__file__).resolve().parents[3]


def real_data_dir() -> Path | None:
    env = os.environ.get("OMNISPECTRA_DATA_DIR")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture
def data_dir() -> Path:
    path = real_data_dir()
    if path is None:
        pytest.skip("real spectra folder ../shared/data is absent (set OMNISPECTRA_DATA_DIR)")
    return path


def write_sdss_like(path: Path, npix: int = 50, *, flux=None, ivar=None, loglam=None,
                    with_specobj: bool = True) -> Path:
    """A minimal SDSS spec-lite file."""
    loglam = np.log10(4000.0) + 1e-4 * np.arange(npix) if loglam is None else np.asarray(loglam)
    flux = np.ones(npix, np.float32) if flux is None else np.asarray(flux, np.float32)
    ivar = np.ones(npix, np.float32) if ivar is None else np.asarray(ivar, np.float32)
    cols = [fits.Column("flux", "E", array=flux), fits.Column("loglam", "E", array=loglam.astype(np.float32)),
            fits.Column("ivar", "E", array=ivar),
            fits.Column("and_mask", "J", array=np.zeros(npix, np.int32))]
    prim = fits.PrimaryHDU()
    prim.header["TELESCOP"] = "SDSS 2.5-M"
    prim.header["BUNIT"] = "1E-17 erg/cm^2/s/Ang"
    prim.header["PLUG_RA"] = 10.0
    prim.header["PLUG_DEC"] = 20.0
    hdus = [prim, fits.BinTableHDU.from_columns(cols, name="COADD")]
    if with_specobj:
        hdus.append(fits.BinTableHDU.from_columns(
            [fits.Column("CLASS", "6A", array=["QSO"]), fits.Column("SUBCLASS", "6A", array=[""]),
             fits.Column("Z", "E", array=[2.0]), fits.Column("Z_ERR", "E", array=[0.001]),
             fits.Column("SURVEY", "6A", array=["boss"]), fits.Column("THING_ID", "J", array=[123]),
             fits.Column("PLUG_RA", "D", array=[10.0]), fits.Column("PLUG_DEC", "D", array=[20.0])],
            name="SPECOBJ"))
    fits.HDUList(hdus).writeto(path)
    return path
