"""Multimodal Universe layouts as the MMU build scripts write them (scripts/sdss, scripts/vipers)."""

from __future__ import annotations

import astropy.units as u
import h5py
import numpy as np
import pytest

import omnispectra.io as oio


def _write_mmu_sdss(path, surveys=(b"segue1 ", b"segue2", b"sdss  "), attrs_survey=None):
    """scripts/sdss/build_parent_sample.py: specObj columns (upper case) + spectrum_*."""
    n, length = len(surveys), 40
    with h5py.File(path, "w") as h5:
        if attrs_survey is not None:
            h5.attrs["survey"] = attrs_survey
        h5["spectrum_lambda"] = np.tile(3800.0 * 10 ** (1e-4 * np.arange(length)), (n, 1)).astype(np.float32)
        h5["spectrum_flux"] = np.ones((n, length), np.float32)
        h5["spectrum_ivar"] = np.full((n, length), 4.0, np.float32)
        h5["spectrum_mask"] = np.zeros((n, length), bool)
        h5["object_id"] = np.arange(100, 100 + n)
        h5["SURVEY"] = np.array(surveys)
        h5["CLASS"] = np.array([b"STAR  "] * (n - 1) + [b"GALAXY"])
        h5["Z"] = np.array([1e-4] * (n - 1) + [0.1])
        h5["ELODIE_TEFF"] = np.array([5800.0, 0.0] + [6100.0] * (n - 2))
        h5["ELODIE_LOGG"] = np.array([4.4, 0.0] + [4.0] * (n - 2))
        h5["ELODIE_FEH"] = np.array([-0.5, 0.0] + [0.1] * (n - 2))
    return path


def test_segue_rows_labelled_from_the_survey_column(tmp_path):
    folder = tmp_path / "sdss" / "segue1" / "healpix=12"
    folder.mkdir(parents=True)
    specs = oio.read(_write_mmu_sdss(folder / "001-of-001.hdf5", attrs_survey=None))
    assert [s.meta["survey"] for s in specs] == ["segue", "segue", "sdss"]


def test_segue_folder_names_map_to_segue(tmp_path):
    folder = tmp_path / "mmu" / "segue2" / "healpix=3"
    folder.mkdir(parents=True)
    path = folder / "001-of-001.hdf5"
    with h5py.File(path, "w") as h5:
        h5["spectrum_lambda"] = np.tile(4000.0 + np.arange(30.0), (1, 1))
        h5["spectrum_flux"] = np.ones((1, 30))
        h5["spectrum_ivar"] = np.ones((1, 30))
    assert oio.read(path)[0].meta["survey"] == "segue"


def test_elodie_parameters_read_when_valid(tmp_path):
    specs = oio.read(_write_mmu_sdss(tmp_path / "001-of-001.hdf5"))
    first, second = specs[0].meta, specs[1].meta
    assert first["teff"] == pytest.approx(5800.0) and first["logg"] == pytest.approx(4.4)
    assert first["fe_h"] == pytest.approx(-0.5) and first["stellar_label_source"] == "ELODIE template match"
    assert not {"teff", "logg", "fe_h"} & set(second)  # Teff = 0: no ELODIE match
    assert first["class"] == "STAR" and specs[2].meta["z"] == pytest.approx(0.1)


def test_vipers_layout(tmp_path):
    """scripts/vipers/build_parent_sample.py: spectrum_wave/_flux/_noise/_mask, lower-case header keys."""
    n, length = 2, 50
    folder = tmp_path / "vipers_w4" / "healpix=7"
    folder.mkdir(parents=True)
    path = folder / "001-of-001.h5"
    noise = np.full((n, length), 2e-18, np.float32)
    noise[0, 5] = 0.0
    mask = np.zeros((n, length), np.float32)
    mask[1, 7] = 1.0
    with h5py.File(path, "w") as h5:
        h5["spectrum_flux"] = np.full((n, length), 1e-17, np.float32)
        h5["spectrum_wave"] = np.tile(5500.0 + 7.0 * np.arange(length), (n, 1)).astype(np.float32)
        h5["spectrum_noise"] = noise
        h5["spectrum_mask"] = mask
        for key in ("ra", "dec", "exptime", "norm", "mag"):
            h5[key] = np.ones(n)
        h5["redshift"] = np.array([0.71, 0.93])
        h5["z"] = np.array([0.71, 0.93])
        h5["redflag"] = np.array([4.5, 2.0])
        h5["object_id"] = np.array([401112345.0, 401112346.0])
        h5["healpix"] = np.full(n, 7)
    assert oio.identify_format(path) == "mmu"
    specs = oio.read(path)
    assert len(specs) == 2
    s = specs[0]
    assert s.meta["survey"] == "vipers" and s.meta["medium"] == "unknown"
    assert s.meta["z"] == pytest.approx(0.71) and s.meta["zflag"] == pytest.approx(4.5)
    assert s.flux.unit == u.Unit("erg / (s cm2 Angstrom)")
    ivar = s.uncertainty.array
    assert ivar[0] == pytest.approx(1 / 2e-18 ** 2, rel=1e-5) and ivar[5] == 0 and s.mask[5]
    assert specs[1].mask[7] and not specs[1].mask[6]
    assert s.spectral_axis[0].to_value(u.AA) == pytest.approx(5500.0)
