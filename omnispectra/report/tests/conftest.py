"""A small catalogue of the bundled example spectra and a synthetic template fitter.

The fitter's bases are smooth continua with lines (no template files needed), so the
report tests run everywhere; the catalogue has the columns ``classify --full`` writes.
"""

import numpy as np
import pytest
from astropy import units as u
from astropy.table import Table

from omnispectra import io
from omnispectra.examples import example_paths
from omnispectra.redshift import RedshiftFitter
from omnispectra.templates.library import TemplateBasis, TemplateLibrary

DLOG = 1e-4
LOGLAM0 = np.log10(2500.0)
REST = 10 ** (LOGLAM0 + DLOG * np.arange(int((np.log10(12000.0) - LOGLAM0) / DLOG)))


def _lines(centres, amps, width=4.0):
    return sum(a * np.exp(-0.5 * ((REST - c) / width) ** 2) for c, a in zip(centres, amps, strict=True))


@pytest.fixture(scope="session")
def fitter():
    x = REST / 5000.0
    galaxy = TemplateBasis(name="redrock:GALAXY", spectype="GALAXY", subtype="", loglam0=LOGLAM0,
                           dloglam=DLOG, basis=np.array([
                               x ** -0.5, _lines([3728.5, 4862.7, 5008.2, 6564.6], [3.0, 2.0, 4.0, 5.0])]))
    star = TemplateBasis(name="redrock:STAR-G", spectype="STAR", subtype="G", loglam0=LOGLAM0, dloglam=DLOG,
                         basis=np.array([np.exp(-((x - 1.1) ** 2)),
                                         -_lines([3934.8, 3969.6, 4862.7, 6564.6], [0.4, 0.35, 0.2, 0.2])]))
    return RedshiftFitter(TemplateLibrary([galaxy, star]))


@pytest.fixture(scope="session")
def catalogue(tmp_path_factory):
    """An ECSV catalogue of the 3 examples, each repeated 4 times (12 rows)."""
    paths = example_paths()
    ids = [io.read(p)[0].meta["id"] for p in paths]
    classes = ["GALAXY", "STAR", "STAR"]
    n = 4 * len(paths)
    k = np.arange(n) % len(paths)
    p_star = np.where(np.array(classes)[k] == "STAR", 0.9, 0.05) - 0.01 * (np.arange(n) // 3)
    table = Table({
        "id": np.array(ids)[k], "source_file": np.array([str(p) for p in paths])[k],
        "survey": np.array(["sdss", "lamost_lrs", "miles"])[k], "class": np.array(classes)[k],
        "prob_GALAXY": 1.0 - p_star - 0.01, "prob_QSO": np.full(n, 0.01), "prob_STAR": p_star,
        "spectype": np.array(classes)[k], "z": np.where(k == 0, 0.02126, 0.0)[:],
        "z_err": np.where(k == 0, 1.7e-5, 1e-4), "deltachi2": np.full(n, 100.0),
        "teff": np.where(k == 0, np.nan, 5027.78) * u.K, "teff_err": np.where(k == 0, np.nan, 208.5) * u.K,
        "flag": np.where(np.arange(n) % 4 == 3, 8 | 2, 0)})
    path = tmp_path_factory.mktemp("catalogue") / "cat.ecsv"
    table.write(path)
    return path
