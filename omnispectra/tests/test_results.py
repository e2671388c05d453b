"""Result Tables: units, provenance meta, and round trips through ECSV, FITS and HDF5."""

import numpy as np
import pytest
import torch
from astropy import units as u
from astropy.table import Table

from omnispectra import OutputError, OutputExistsError, OutputIsInputError
from omnispectra.model import OmniSpectra, OmniSpectraConfig
from omnispectra.pretrained import load_model, save_weights
from omnispectra.results import (
    META_KEYS,
    anomaly_table,
    apply_formats,
    embeddings_table,
    predictions_table,
    provenance_meta,
    reconstruction_table,
    write_table,
    z_format,
)

IDS = ["plain", "with\nnewline", 'comma, "quote"', "tab\there"]
FORMATS = [".ecsv", ".fits", ".h5"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "micro.safetensors"
    save_weights(OmniSpectra(OmniSpectraConfig.from_preset("tiny", dim=32, n_layers=1, n_heads=2)), path)
    return load_model(path, device="cpu")


def _meta(model, **kw):
    return provenance_meta(model, dtype=None, **kw)


def test_provenance_meta_keys_and_no_paths(model, tmp_path):
    from omnispectra import __version__
    from omnispectra.pretrained import sha256sum
    from omnispectra.probes import Probe, encoder_fingerprint

    meta = provenance_meta(model, dtype=torch.bfloat16, kind="embeddings")
    assert meta == {"OMNIVERS": __version__, "MODEL": "micro.safetensors",
                    "MODELSHA": sha256sum(model.info["path"]), "ENCSHA": encoder_fingerprint(model),
                    "DTYPE": "bfloat16", "DEVICE": "cpu", "KIND": "embeddings"}
    probe = Probe(32, "regression", ["teff"], info={"name": "/somewhere/probe-x"})
    meta = provenance_meta(model, probe=probe, dtype="float32")
    assert meta["PROBE"] == "probe-x" and meta["PROBESHA"] == encoder_fingerprint(probe)
    assert set(meta) <= set(META_KEYS)
    assert not any("/" in str(v) for v in meta.values())
    assert all(len(k) <= 8 and k.isupper() for k in META_KEYS)  # valid FITS keywords
    # "auto" records what it resolved to on this machine
    assert provenance_meta(model, dtype="auto")["DTYPE"] in ("float32", "bfloat16")
    unnamed = OmniSpectra(model.config)
    assert provenance_meta(unnamed)["MODEL"] == "" and provenance_meta(unnamed)["MODELSHA"] == ""


def _round_trip(table, path):
    write_table(table, path)
    return Table.read(path)  # filterwarnings=error: no warning on write or read


def _check_common(table, back):
    assert back.colnames == table.colnames
    assert list(back["id"]) == list(table["id"])
    assert {k: back.meta[k] for k in table.meta} == dict(table.meta)


@pytest.mark.parametrize("suffix", FORMATS)
def test_embeddings_round_trip(model, tmp_path, suffix):
    vectors = np.random.default_rng(0).normal(size=(len(IDS), 32)).astype(np.float32)
    table = embeddings_table(IDS, vectors, source_files=["a.fits"] * 4,
                             surveys=["sdss", "sdss/boss", "x", "y"], meta=_meta(model))
    back = _round_trip(table, tmp_path / f"emb{suffix}")
    _check_common(table, back)
    assert back.meta["KIND"] == "embeddings"
    assert back["embedding"].dtype.newbyteorder("=") == np.float32 and back["embedding"].shape == (4, 32)
    np.testing.assert_array_equal(back["embedding"], vectors)
    assert list(back["survey"]) == ["sdss", "sdss/boss", "x", "y"]


@pytest.mark.parametrize("suffix", FORMATS)
def test_anomaly_round_trip(model, tmp_path, suffix):
    table = anomaly_table(IDS, [0.1, np.nan, 2.5, 1e-9], [False, False, True, False], n_masks=8, seed=3,
                          meta=_meta(model))
    back = _round_trip(table, tmp_path / f"anom{suffix}")
    _check_common(table, back)
    np.testing.assert_array_equal(back["anomaly"], table["anomaly"])
    assert list(back["noise_estimated"]) == [False, False, True, False]
    assert back.meta["NMASKS"] == 8 and back.meta["MASKSEED"] == 3


@pytest.mark.parametrize("suffix", FORMATS)
def test_predictions_round_trip_with_units(model, tmp_path, suffix):
    columns = {"class": np.array(["STAR", "QSO", "GALAXY", "STAR"]), "teff": [5000.0, 6000.5, 7000.0, 4000.0],
               "logg": [4.4, 2.0, 1.5, 5.0], "fe_h": [0.0, -1.2, 0.3, -0.5], "z": [0.0, 2.1, 0.3, 0.0]}
    table = predictions_table(IDS, columns, meta=_meta(model))
    assert table["teff"].unit == u.K and table["logg"].unit == u.dex(u.cm / u.s**2)
    assert table["fe_h"].unit == u.dex
    back = _round_trip(table, tmp_path / f"pred{suffix}")
    _check_common(table, back)
    assert list(back["class"]) == list(columns["class"])
    for name in ("teff", "logg", "fe_h", "z"):
        np.testing.assert_array_equal(back[name], table[name])
    assert back["teff"].unit == u.K
    if suffix == ".fits":  # FITS has no function units: values stay, the unit is in the description
        assert back["logg"].unit is None and "dex(cm / s2)" in back["logg"].description
        assert back["fe_h"].unit is None and "[unit: dex]" in back["fe_h"].description
    else:
        assert back["logg"].unit == u.dex(u.cm / u.s**2) and back["fe_h"].unit == u.dex


@pytest.mark.parametrize("suffix", FORMATS)
def test_reconstruction_round_trip_with_flux_unit(model, tmp_path, suffix):
    from omnispectra.api import reconstruct
    from omnispectra.examples import example_path

    rec = reconstruct(example_path("sdss"), model=model, seed=1)
    table = reconstruction_table(rec, meta=_meta(model))
    assert table["flux"].unit == u.Unit(rec.flux_unit) and table["wavelength"].unit == u.AA
    back = _round_trip(table, tmp_path / f"rec{suffix}")
    _check_common(table, back)
    assert back["flux"].unit == u.Unit(rec.flux_unit) and back["reconstruction"].unit == u.Unit(rec.flux_unit)
    np.testing.assert_array_equal(back["flux"][0], rec.flux)
    np.testing.assert_array_equal(back["reconstruction"][0], rec.reconstruction)
    np.testing.assert_array_equal(back["pixel_masked"][0], rec.pixel_masked)
    np.testing.assert_array_equal(back["token_mask"][0], rec.token_mask)
    assert back["mse"][0] == rec.mse


def test_exact_ids_in_hdf5_and_documented_losses(model, tmp_path):
    odd = ["  leading", "trailing  ", "unicode-é"]
    table = anomaly_table(odd, [1.0, 2.0, 3.0], meta=_meta(model))
    assert list(_round_trip(table, tmp_path / "a.h5")["id"]) == odd
    assert list(_round_trip(table, tmp_path / "a.ecsv")["id"]) == [s.strip() for s in odd]
    with pytest.raises(OutputError, match="not ASCII"):
        write_table(table, tmp_path / "a.fits")
    assert not (tmp_path / "a.fits").exists()


def test_write_table_refuses_to_destroy_files(model, tmp_path):
    table = anomaly_table(["a"], [1.0], meta=_meta(model))
    spectrum = tmp_path / "s.fits"
    spectrum.write_bytes(b"precious")
    with pytest.raises(OutputIsInputError):
        write_table(table, spectrum, overwrite=True, inputs=[spectrum])
    assert spectrum.read_bytes() == b"precious"
    with pytest.raises(OutputExistsError):
        write_table(table, spectrum)
    assert spectrum.read_bytes() == b"precious"
    write_table(table, spectrum, overwrite=True)
    assert list(Table.read(spectrum)["id"]) == ["a"]
    with pytest.raises(OutputError, match="format"):
        write_table(table, tmp_path / "t.npy")


def test_z_format_follows_the_smallest_error():
    assert z_format() == ".5f" and z_format([np.nan, 0.0]) == ".5f"  # no usable error: 1e-5
    assert z_format([2.4e-3, 8.8e-6]) == ".6f"  # the first digit of 8.8e-6 is shown
    assert z_format([1e-4]) == ".5f"  # never fewer than 5 decimals
    assert z_format([1e-14]) == ".10f"  # nor more than float64 means at z ~ 1
    assert z_format(np.array([3e-7]) * u.dimensionless_unscaled) == ".7f"


def _catalogue():
    z = np.array([0.13698041651625753, 2.2252716484389710])
    return Table({"id": ["a", "b"], "prob_QSO": np.array([0.123456, 0.98765], dtype=np.float32),
                  "z": z, "z_err": np.array([8.7733512e-06, 0.0019450567]),
                  "teff": np.array([5027.78125, np.nan], dtype=np.float32) * u.K,
                  "logg": np.array([3.6150012, np.nan]), "flag": np.array([0, 8])})


def test_formats_print_by_precision_and_keep_the_values():
    table = apply_formats(_catalogue())
    lines = table.pformat(max_width=-1)
    assert lines[-2].split() == ["a", "0.123", "0.136980", "8.8e-06", "5028", "3.62", "0"]
    assert lines[-1].split() == ["b", "0.988", "2.225272", "0.0019", "nan", "nan", "8"]
    assert table["z"][0] == 0.13698041651625753  # stored values are never rounded
    table["z"].info.format = ".2f"
    assert apply_formats(table)["z"].info.format == ".2f"  # a format that was set stays
    assert apply_formats(table, replace=True)["z"].info.format == ".6f"
    assert table["id"].info.format is None and table["flag"].info.format is None


@pytest.mark.parametrize("suffix", FORMATS)
def test_written_tables_carry_formats_and_full_values(tmp_path, suffix):
    table = _catalogue()
    back = _round_trip(table, tmp_path / f"cat{suffix}")
    assert table["z"].info.format is None  # the caller's table is not changed
    np.testing.assert_array_equal(back["z"], table["z"])  # full precision in every format
    if suffix == ".ecsv":
        text = (tmp_path / "cat.ecsv").read_text()
        assert "{name: z, datatype: float64, format: .6f}" in text
        assert "{name: teff, unit: K, datatype: float32, format: .0f}" in text
        assert "0.13698041651625753" in text  # the data lines keep every digit
        assert back["prob_QSO"].info.format == ".3f"
