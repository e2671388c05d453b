"""Template files are validated when loaded, and the compact form round-trips.

Every degenerate basis or broken header is refused with a one-line
:class:`~omnispectra.exceptions.InvalidTemplatesError` naming the file and the problem.
"""

from __future__ import annotations

import gzip
import io
import json
import zipfile

import numpy as np
import pytest

from omnispectra.exceptions import InvalidTemplatesError, OmniSpectraError, TemplatesNotFoundError
from omnispectra.templates.library import (
    COMPACT_FORMAT_VERSION,
    FINE_DLOGLAM,
    TemplateLibrary,
    load_compact,
    load_library,
    load_redrock,
    write_compact,
)
from omnispectra.tests.helpers import write_rrtemplate

N_PIX = 2000


def _rows(n_basis: int = 3) -> np.ndarray:
    """A well-conditioned basis: a constant, a slope and a sine wave."""
    x = np.linspace(0.0, 1.0, N_PIX)
    return np.array([np.ones(N_PIX), x, np.sin(7.0 * x)][:n_basis])


def _write(folder, name="rrtemplate-galaxy.fits", data=None, **header):
    return write_rrtemplate(folder / "redrock" / name, data, **header)


def test_valid_files_load(tmp_path):
    t = load_redrock(_write(tmp_path))
    assert t.name == "redrock:GALAXY" and t.basis.shape[0] == 3 and t.dloglam == FINE_DLOGLAM
    assert 3000.0 < t.rest_range[0] < t.rest_range[1] < 3000.0 + 2.0 * N_PIX
    log = load_redrock(_write(tmp_path, "rrtemplate-QSO-LOZ-v1.1.fits", RRTYPE="QSO", RRSUBTYP="LOZ",
                              CRVAL1=3.0, CDELT1=1e-4, LOGLAM=1))
    assert log.name == "redrock:QSO-LOZ" and log.basis.shape == (3, N_PIX) and log.sigma_kms > 0


NAN = np.full((3, N_PIX), np.nan)
ONE_NAN = _rows()
ONE_NAN[1, 10] = np.inf
REPEATED = _rows()
REPEATED[2] = 2.0 * REPEATED[1]

DEGENERATE = {
    "all-zero basis": ({"data": np.zeros((5, N_PIX))}, "rank 0 for 5 vectors"),
    "all-NaN basis": ({"data": NAN}, "NaN or inf"),
    "one infinite value": ({"data": ONE_NAN}, "1 of the basis's"),
    "repeated vector": ({"data": REPEATED}, "rank 2 for 3 vectors"),
    "1-D image": ({"data": np.ones(N_PIX)}, "not a 2-D image"),
    "too many vectors": ({"data": np.ones((65, 20))}, "outside 1-64 vectors"),
    "no CRVAL1": ({"CRVAL1": None}, "header keys CRVAL1 are missing"),
    "no RRTYPE": ({"RRTYPE": None}, "header keys RRTYPE are missing"),
    "unknown RRTYPE": ({"RRTYPE": "PLANET"}, "RRTYPE='PLANET' is not one of"),
    "negative CDELT1": ({"CDELT1": -0.1}, "wavelength step -0.1 <= 0"),
    "zero CDELT1": ({"CDELT1": 0.0}, "must strictly increase"),
    "non-numeric CRVAL1": ({"CRVAL1": "blue"}, "not numbers"),
    "wavelengths out of range": ({"CRVAL1": 5.0, "LOGLAM": 1, "CDELT1": 1e-3}, "outside the rest-frame"),
}


@pytest.mark.parametrize("changes, message", DEGENERATE.values(), ids=DEGENERATE.keys())
def test_degenerate_templates_refused(tmp_path, changes, message):
    path = _write(tmp_path, **changes)
    with pytest.raises(InvalidTemplatesError, match=message) as info:
        load_redrock(path)
    text = str(info.value)
    assert "\n" not in text and text.startswith(str(path))
    with pytest.raises(InvalidTemplatesError, match=message):  # load_library refuses it too
        load_library(tmp_path, pyhammer=False)


@pytest.mark.parametrize("content", [b"not a FITS file at all" * 200, b""], ids=["garbage", "empty"])
def test_unreadable_file_refused(tmp_path, content):
    (tmp_path / "redrock").mkdir()
    path = tmp_path / "redrock" / "rrtemplate-galaxy.fits"
    path.write_bytes(content)
    with pytest.raises(InvalidTemplatesError, match="not a readable Redrock template file"):
        load_redrock(path)


def test_truncated_gzip_refused(tmp_path):
    good = _write(tmp_path)
    data = gzip.compress(good.read_bytes())
    bad = good.with_name("rrtemplate-STAR-K.fits.gz")
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidTemplatesError, match="rrtemplate-STAR-K.fits.gz: not a readable"):
        load_redrock(bad)


def test_missing_folder_is_not_found(tmp_path, monkeypatch):
    monkeypatch.delenv("OMNISPECTRA_TEMPLATES", raising=False)
    with pytest.raises(TemplatesNotFoundError, match="does not exist"):
        load_library(tmp_path / "nope")
    with pytest.raises(TemplatesNotFoundError, match="OMNISPECTRA_TEMPLATES"):
        load_library()


# --------------------------------------------------------------------------- compact form


def _library(tmp_path):
    _write(tmp_path)
    _write(tmp_path, "rrtemplate-STAR-K-v0.1.fits", RRTYPE="STAR", RRSUBTYP="K")
    _write(tmp_path, "rrtemplate-QSO-HIZ-v1.1.fits", RRTYPE="QSO", RRSUBTYP="HIZ", CRVAL1=2.7, CDELT1=1e-4,
           LOGLAM=1)
    return load_library(tmp_path, pyhammer=False)


def test_compact_round_trip_and_reproducible(tmp_path):
    full = _library(tmp_path)
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    write_compact(full, a, info={"release": "test-1"})
    write_compact(full, b, info={"release": "test-1"})
    assert a.read_bytes() == b.read_bytes()  # byte-for-byte reproducible
    compact = load_compact(a)
    assert compact.info == {"release": "test-1"} and len(compact) == len(full)
    for f, c in zip(full.templates, compact.templates, strict=True):
        assert (c.name, c.spectype, c.subtype, c.loglam0, c.dloglam, c.sigma_kms, c.intrinsic_sigma_kms) == (
            f.name, f.spectype, f.subtype, f.loglam0, f.dloglam, f.sigma_kms, f.intrinsic_sigma_kms)
        np.testing.assert_array_equal(c.basis, f.basis.astype(np.float32))
        assert c.archetypes is None and c.source == str(a)
    only = load_library(a, redrock=["STAR-K-v0.1"])
    assert [t.name for t in only.templates] == ["redrock:STAR-K"]
    with pytest.raises(InvalidTemplatesError, match="none of the templates asked for"):
        load_compact(a, keys=["nope"])


def _members(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _rewrite(path, members: dict[str, np.ndarray], allow_pickle=False) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, array in members.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=allow_pickle)
            zf.writestr(f"{name}.npy", buffer.getvalue())


def _header_of(members):
    return json.loads(str(members["header"][()]))


def _broken(members, how):
    header = _header_of(members)
    if how == "version":
        header["format_version"] = COMPACT_FORMAT_VERSION + 1
    elif how == "entry":
        del header["templates"][0]["loglam0"]
    elif how == "missing array":
        del members["basis_01"]
    elif how == "wrong dtype":
        members["basis_00"] = members["basis_00"].astype(np.float32)
    elif how == "all-zero basis":
        members["basis_00"] = np.zeros_like(members["basis_00"])
    elif how == "negative step":
        header["templates"][0]["dloglam"] = -2e-5
    elif how == "huge shape":
        header["templates"][0]["shape"] = [3, 10**9]
    elif how == "pickled header":
        members["header"] = np.array([header], dtype=object)
        return members
    members["header"] = np.array(json.dumps(header))
    return members


BROKEN = {"version": "format version", "entry": "header entry is missing or malformed",
          "missing array": "basis_01 is missing", "wrong dtype": "not the float32 byte planes",
          "all-zero basis": "rank 0", "negative step": "wavelength step",
          "huge shape": "outside 1-64 vectors",
          "pickled header": "Object arrays cannot be loaded when allow_pickle=False"}


@pytest.mark.parametrize("how, message", BROKEN.items(), ids=BROKEN.keys())
def test_broken_compact_refused(tmp_path, how, message):
    path = tmp_path / "c.npz"
    write_compact(_library(tmp_path), path)
    _rewrite(path, _broken(_members(path), how), allow_pickle=how == "pickled header")
    with pytest.raises(InvalidTemplatesError, match=message) as info:
        load_library(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_not_a_compact_file(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(b"PK not really a zip")
    with pytest.raises(InvalidTemplatesError, match="not a readable compact template file"):
        load_compact(path)
    np.savez(path, other=np.ones(3))
    with pytest.raises(InvalidTemplatesError, match="no header"):
        load_compact(path)
    assert issubclass(InvalidTemplatesError, OmniSpectraError)
    assert issubclass(InvalidTemplatesError, ValueError)


def test_write_compact_refuses_a_degenerate_library(tmp_path):
    lib = _library(tmp_path)
    lib.templates[0].basis = np.zeros_like(lib.templates[0].basis)
    with pytest.raises(InvalidTemplatesError, match="rank 0"):
        write_compact(lib, tmp_path / "c.npz")
    assert not (tmp_path / "c.npz").exists()
    assert isinstance(TemplateLibrary(), TemplateLibrary)
