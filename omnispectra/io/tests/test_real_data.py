"""Tests on the real survey files in ``../shared/data`` (skipped when that folder is absent)."""

from __future__ import annotations

import csv
import time
import warnings
from collections import defaultdict

import astropy.units as u
import numpy as np
import pytest
from astropy.nddata import InverseVariance

import omnispectra.io as oio
from omnispectra.exceptions import InvalidSpectrumError, NotASpectrumError

# (family, glob relative to the data dir, expected format, vacuum-Angstrom range that must hold)
FAMILIES = [
    ("sdss_legacy", "sdss/gelato/*.fits", "sdss", (3700, 9300)),
    ("sdss_firefly", "sdss/firefly/*.fits", "sdss", (3700, 9300)),
    ("sdss_ppxf", "sdss/ppxf/*.fits", "sdss", (3700, 9300)),
    ("sdss_pyqsofit", "sdss/pyqsofit/*.fits", "sdss", (3500, 10500)),
    ("boss_picca", "sdss/picca/*/spec-*.fits", "sdss", (3500, 10500)),
    ("boss_squeze", "sdss/squeze/spec-*.fits", "sdss", (3500, 10500)),
    ("miles", "miles/MILES_*.fits", "miles", (3500, 7500)),
    ("apogee_aspcap", "apogee/aspcapStar/*.fits", "apogee_aspcapstar", (15000, 17100)),
    ("apogee_apstar", "apogee/apStar/*.fits", "apogee_apstar", (15000, 17100)),
    ("desi_coadd", "desi/coadd-*.fits", "desi", (3550, 9850)),
    ("desi_specutils", "desi/specutils/*.fits", "desi", (3550, 9850)),
    ("desi_stack", "desi/stack-*.fits", "desi_stack", (2400, 7000)),
    ("lamost_lrs", "lamost/spec-*.fits*", "lamost_lrs", (3650, 9150)),
    ("lamost_mrs", "lamost/med-*.fits*", "lamost_mrs", (4800, 6900)),
    ("lamost_dr10", "lamost/pylasp/*.fits", "lamost_lrs", (3650, 9150)),
    ("lamost_dr3", "lamost/dr3/*.fits", "lamost_lrs", (3650, 9150)),
    ("manga", "manga/*.fits.gz", "manga", (3600, 10400)),
    ("xshooter", "xshooter/*.fits", "xshooter_xsl", (2900, 5600)),
    ("legac", "legac/*.fits", "eso_phase3", (5700, 9600)),
    ("sdss_more", "sdss/more/HiSS-Cube/*.fits", "sdss", (3500, 10500)),
    ("pyhammer_templates", "templates/pyhammer/*.fits.gz", "eso_phase3", (3600, 10300)),
]

NOT_SPECTRA = {
    "desi/redrock-4-80613-thru20210324.fits": "redrock",
    "desi/redrock-special-dark-27247.fits": "redrock",
    "gaia_xp/XP_CONTINUOUS_RAW.fits": "Gaia",
    "sdss/picca/cat_for_clustering_plate3655.fits.gz": "catalogue",
    "sdss/squeze/cat_boss_test1.fits.gz": "catalogue",
}
# A real dead fibre: SDSS spec-0269-51581-0003 has ivar == 0 and flux == 0 at every pixel
# (ZWARNING 6, SN_MEDIAN_ALL 0); reading it must fail loudly, not give an empty spectrum.
INVALID_FILES = {"sdss/gelato/spec-0269-51581-0003.fits"}
# Redrock template bases are not spectra a reader should take (no wavelength array in a
# spectral layout); they may fail here, nothing else may.
PENDING_ELSEWHERE = ("templates/redrock/",)
REQUIRED_META = ("id", "object_id", "survey", "source_file", "format", "rest_frame", "medium")
LABEL_KEYS = ("class", "subclass", "z", "z_err", "teff", "logg", "fe_h")
MAX_PER_FAMILY = 12


def check_contract(s, fmt, wave_range):
    w = s.spectral_axis
    assert w.unit == u.AA
    w = w.value
    assert w.ndim == 1 and np.all(np.diff(w) > 0), s.meta["id"]
    assert wave_range[0] <= w[0] and w[-1] <= wave_range[1], (s.meta["id"], w[0], w[-1])
    assert s.flux.shape == w.shape == s.mask.shape == s.uncertainty.array.shape
    assert isinstance(s.uncertainty, InverseVariance)
    assert s.mask.dtype == bool and not s.mask.all()
    assert np.all(np.isfinite(s.flux.value)) and np.all(s.uncertainty.array >= 0)
    assert np.all(s.mask[s.uncertainty.array <= 0])
    for key in REQUIRED_META:
        assert key in s.meta, (s.meta["id"], key)
    assert s.meta["format"] == fmt
    assert s.meta["medium"] in ("vacuum", "air->vacuum", "unknown")
    assert isinstance(s.meta["rest_frame"], bool)
    for key in ("z", "z_err", "teff", "logg", "fe_h"):
        if key in s.meta:
            assert isinstance(s.meta[key], float) and abs(s.meta[key]) < 9000 or key == "teff"
    if "teff" in s.meta:
        assert 2000 < s.meta["teff"] < 60000
    if "class" in s.meta:
        assert s.meta["class"] in ("GALAXY", "QSO", "STAR")


@pytest.mark.parametrize("family,pattern,fmt,wave_range", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_family_reads_and_meets_contract(data_dir, family, pattern, fmt, wave_range):
    files = sorted(p for p in data_dir.glob(pattern)
                   if str(p.relative_to(data_dir)) not in INVALID_FILES | set(NOT_SPECTRA))
    assert files, f"no files for {pattern}"
    step = max(1, len(files) // MAX_PER_FAMILY)
    for path in files[::step]:
        assert oio.identify_format(path) == fmt
        spectra = oio.read(path)
        assert len(spectra) >= 1
        for s in spectra:
            check_contract(s, fmt, wave_range)
            assert s.meta["source_file"] == str(path.resolve())


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_sdss_labels_match_index(data_dir):
    rows = _csv(data_dir / "sdss" / "index.csv")
    for row in rows[::7]:
        if row["file"] in INVALID_FILES:
            continue
        s = oio.read(data_dir / row["file"])[0]
        assert s.meta["class"] == row["CLASS"]
        assert s.meta.get("subclass", "") == row["SUBCLASS"]
        assert s.meta["z"] == pytest.approx(float(row["Z"]), abs=2e-6)
        assert s.meta["survey"] in ("sdss", "boss", "eboss", "segue")
        assert s.flux.unit == u.Unit("1e-17 erg / (s cm2 Angstrom)")
        assert s.spectral_axis.value[0] == pytest.approx(float(row["wave_min"]), abs=0.01)
        assert s.flux.size == int(row["npix"])


def test_squeze_pipeline_labels(data_dir):
    for row in _csv(data_dir / "sdss" / "squeze" / "index.csv")[::5]:
        s = oio.read(data_dir / row["file"])[0]
        assert s.meta["class"] == row["pipe_CLASS"] and s.meta["survey"] == "boss"
        assert s.meta["z"] == pytest.approx(float(row["pipe_Z"]), abs=1e-6)
        if s.meta["class"] != "STAR":
            assert "teff" not in s.meta  # ELODIE parameters are 0 for non-stars: absent


def test_miles_labels_match_index_and_air_to_vacuum(data_dir):
    from specutils.utils.wcs_utils import air_to_vac

    rows = _csv(data_dir / "miles" / "index.csv")
    for row in rows[::40]:
        s = oio.read(data_dir / row["file"])[0]
        m = s.meta
        assert m["object_id"] == row["miles_id"] and m["survey"] == "miles" and m["medium"] == "air->vacuum"
        for key, col, sentinel in (("teff", "Teff", 99999), ("logg", "logg", 9999), ("fe_h", "FeH", 9999)):
            if float(row[col]) == sentinel:
                assert key not in m
            else:
                assert m[key] == pytest.approx(float(row[col]))
        air = float(row["wave_min"]) + float(row["dwave"]) * np.arange(int(row["npix"]))
        expected = air_to_vac(air * u.AA, scheme="inversion", method="Morton2000").to_value(u.AA)
        np.testing.assert_allclose(s.spectral_axis.value, expected, rtol=0, atol=1e-6)
        assert m["ivar_is_placeholder"] is True and s.flux.unit == u.dimensionless_unscaled
    # 5000 A in air is ~5001.39 A in vacuum; MILES pixel 1622 sits at 5000.3 A (air)
    s = oio.read(data_dir / "miles" / "MILES_res2.50_star_m0001V.fits")[0]
    i = 1622
    assert 3540.5 + 0.9 * i == pytest.approx(5000.3)
    assert s.spectral_axis.value[i] == pytest.approx(5001.69, abs=0.01)


def test_desi_labels_and_arm_merge(data_dir):
    rows = [r for r in _csv(data_dir / "desi" / "index.csv") if r["SPECTYPE"]]
    assert rows
    for row in rows:
        specs = oio.read(data_dir / row["file"])
        s = [x for x in specs if x.meta["targetid"] == int(row["TARGETID"])][0]
        assert s.meta["class"] == row["SPECTYPE"] and s.meta["z"] == pytest.approx(float(row["Z"]))
        assert s.meta["id"].endswith(":" + row["TARGETID"])
        assert s.meta["object_id"] == f"desi:{row['TARGETID']}"
        w = s.spectral_axis.value
        assert w.size == 7781 and w[0] == pytest.approx(3600.0) and w[-1] == pytest.approx(9824.0)
        np.testing.assert_allclose(np.diff(w), 0.8, atol=1e-3)
    stack = oio.read(data_dir / "desi" / "stack-LRG.fits")[0]
    assert stack.meta["rest_frame"] is True and stack.meta["stack_zmed"] == pytest.approx(0.4264, abs=1e-3)


def test_desi_specutils_files_skip_dead_rows(data_dir):
    specs = oio.read(data_dir / "desi" / "specutils" / "coadd-sv3-dark-26065.fits")
    # 3 of the 5 rows of the trimmed specutils test file have ivar == 0 everywhere
    assert len(specs) == 2 and len(specs.skipped) == 3
    assert all("inverse variance is zero" in m for m in specs.skipped)


def test_lamost_labels_and_shared_object(data_dir):
    for idx in ("lamost/index.csv", "lamost/pylasp/index.csv", "lamost/dr3/index.csv"):
        for row in _csv(data_dir / idx)[::3]:
            specs = oio.read(data_dir / row["file"])
            for s in specs:
                assert s.meta["obsid"] == int(row["OBSID"]) and s.meta["desig"] == row["DESIG"]
                if row.get("CLASS"):
                    assert s.meta["class"] == row["CLASS"] and s.meta["subclass"] == row["SUBCLASS"]
                    assert s.meta["z"] == pytest.approx(float(row["Z"]))
            if "kind" in row and row["kind"] == "MRS":  # two arms of one star: one spectrum
                arms = oio.read(data_dir / row["file"], stitch=False)
                assert [s.meta["id"].rsplit(":", 1)[1] for s in arms] == ["B", "R"]
                (one,) = specs
                assert [p["name"] for p in one.meta["stitched"]["pieces"]] == ["B", "R"]
                assert one.meta["id"] == arms[0].meta["id"][:-2]
                assert one.meta["object_id"] == arms[0].meta["object_id"]
                np.testing.assert_array_equal(one.spectral_axis.value,
                                              np.concatenate([a.spectral_axis.value for a in arms]))
    # KIC 8098300: 7 MRS epochs + 1 LRS file, DESIGs differ by 0.3", one object_id
    kic = {s.meta["object_id"] for p in (data_dir / "lamost").glob("*KP*")
           for s in oio.read(p)} | {s.meta["object_id"] for p in (data_dir / "lamost").glob("*TD19*")
                                    for s in oio.read(p)}
    assert len(kic) == 1


def test_manga_labels(data_dir):
    rows = _csv(data_dir / "manga" / "index.csv")
    by_id = {}
    for f in sorted({r["file"] for r in rows}):
        for s in oio.read(data_dir / f):
            by_id[s.meta["id"]] = s
    matched = 0
    for r in rows:
        sid = f"{r['file'].split('/')[-1][:-len('.fits.gz')]}:{r['row']}"
        if sid in by_id:
            assert by_id[sid].meta["z"] == pytest.approx(float(r["Z"]))
            matched += 1
    assert matched == 10  # row 5 of MaNGA_test_spectra is DONOTUSE at every pixel -> skipped


def test_apogee_labels(data_dir):
    rows = {r["file"]: r for r in _csv(data_dir / "apogee" / "index_aspcapStar.csv")}
    for f, row in rows.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            s = oio.read(data_dir / f)[0]
        assert len(caught) <= 1  # 11 files carry AKTARG/AKWISE = NaN cards; at most one warning
        m = s.meta
        assert m["object_id"] == row["APOGEE_ID"] and m["class"] == "STAR"
        for key, col in (("teff", "PARAM_TEFF"), ("logg", "PARAM_LOGG"), ("fe_h", "PARAM_M_H")):
            if float(row[col]) == -9999:
                assert key not in m
            else:
                assert m[key] == pytest.approx(float(row[col]), rel=1e-4)
        assert m["teff_fparam"] == pytest.approx(float(row["FPARAM_TEFF"]), rel=1e-4)
    ap = oio.read(data_dir / "apogee" / "apStar" / "apStar-r6-2M00452143+1634446.fits", visits=True)
    assert [s.meta["apstar_row"] for s in ap] == [0, 2, 3, 4]
    assert len({s.meta["id"] for s in ap}) == 4 and ap[0].meta["object_id"] == "2M00452143+1634446"


def test_xsl_and_legac(data_dir):
    x = oio.read(data_dir / "xshooter" / "xsl_spectrum_X0360_uvb.fits")[0]
    assert x.meta["object_id"] == "BD+012916" and x.meta["medium"] == "air->vacuum" and x.meta["rest_frame"]
    assert x.spectral_axis.value[0] == pytest.approx(2989.044 + 0.87, abs=0.05)
    assert np.all(x.mask[x.spectral_axis.value < 3300])
    lg = oio.read(data_dir / "legac" / "legac_M19_56670_v3.0.fits")[0]
    assert lg.meta["survey"] == "legac" and lg.meta["medium"] == "air->vacuum"
    assert lg.flux.unit == u.Unit("1e-19 erg / (s cm2 Angstrom)")


def test_not_spectra_and_invalid_files(data_dir):
    for rel, what in NOT_SPECTRA.items():
        with pytest.raises(NotASpectrumError, match=what):
            oio.read(data_dir / rel)
    for rel in INVALID_FILES:
        with pytest.raises(InvalidSpectrumError, match=rel.split("/")[-1]):
            oio.read(data_dir / rel)


def test_read_every_file(data_dir):
    """Every FITS/HDF5 file: spectrum files read, known non-spectra raise NotASpectrumError."""
    t0 = time.perf_counter()
    it = oio.iter_spectra(data_dir, on_error="skip")
    ids, objects, per_format = set(), defaultdict(set), defaultdict(int)
    n = 0
    for s in it:
        n += 1
        assert s.meta["id"] not in ids, s.meta["id"]
        ids.add(s.meta["id"])
        objects[s.meta["object_id"]].add(s.meta["id"])
        per_format[s.meta["format"]] += 1
    wall = time.perf_counter() - t0
    rel = lambda p: str(p.relative_to(data_dir))  # noqa: E731
    failed = {rel(f.path) for f in it.failures}
    unexpected = [str(f) for f in it.failures
                  if rel(f.path) not in INVALID_FILES and not rel(f.path).startswith(PENDING_ELSEWHERE)]
    assert not unexpected, unexpected
    assert INVALID_FILES <= failed
    assert {rel(f.path) for f in it.not_spectra} == set(NOT_SPECTRA)
    assert all(isinstance(f.error, NotASpectrumError) for f in it.not_spectra)
    assert it.n_files_read == len(it.files) - len(NOT_SPECTRA) - len(failed) - len(it.passed_over)
    assert {p.path.name for p in it.passed_over} >= {"index.csv"}  # named, not read
    assert per_format["miles"] == 804 and per_format["sdss"] == 171, (n, dict(per_format), wall)
    assert per_format["eso_phase3"] >= 2 + 228  # LEGA-C, VANDELS and the PyHammer templates
    # repeat observations share object ids: SDSS-RM quasar RM017 (SDSS-I + 3 eBOSS epochs)
    assert len(objects["sdss:1237661385994338550"]) == 4
    # BOSS plate 3655 and eBOSS 9367/10656 re-observations of one quasar (THING_ID 434932660)
    assert len(objects["sdss:1237673705040249567"]) == 3
    # an APOGEE star's aspcapStar and apStar
    assert len(objects["2M00452143+1634446"]) == 2
    print(f"read-everything: {n} spectra from {it.n_files_read} files in {wall:.1f} s; {it.summary()}")
