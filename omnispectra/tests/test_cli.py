"""The command line: never destroying a file, result tables, one-line errors and exit codes."""

import logging
import shutil

import astropy.units as u
import numpy as np
import pytest
import torch
from astropy.table import Table
from click.testing import CliRunner

from omnispectra import api
from omnispectra.cli import logging_for, main
from omnispectra.examples import example_paths

from .helpers import TINY_DIM as DIM  # width of the tiny ``model``/``weights`` fixtures (conftest.py)


@pytest.fixture
def spectrum_file(tmp_path):
    """A copy of one bundled example spectrum (a file the tests may try to destroy)."""
    src = example_paths()[0]
    path = tmp_path / src.name
    shutil.copyfile(src, path)
    return path


def _one_error_line(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


# --------------------------------------------------------------------------- never destroy a file


@pytest.mark.parametrize("command", [["embed"], ["classify"], ["anomaly"]])
def test_output_that_is_an_input_is_refused_before_any_work(command, spectrum_file, monkeypatch):
    before = spectrum_file.read_bytes()
    monkeypatch.setattr("omnispectra.runtime.resolve_model",
                        lambda *a, **k: pytest.fail("the model was loaded before the output check"))
    out = spectrum_file  # classify s.fits -o s.fits used to replace the spectrum by the table
    for extra in ([], ["--overwrite"]):  # --overwrite never allows it
        result = CliRunner().invoke(main, [*command, str(spectrum_file), "-o", str(out), *extra])
        assert "one of the inputs" in _one_error_line(result, 1)
    inside = CliRunner().invoke(main, [*command, str(spectrum_file.parent), "-o", str(out)])
    assert "one of the inputs" in _one_error_line(inside, 1)
    assert spectrum_file.read_bytes() == before


def test_existing_output_needs_overwrite(weights, spectrum_file, tmp_path):
    out = tmp_path / "e.ecsv"
    out.write_text("precious")
    args = ["embed", str(spectrum_file), "-o", str(out), "--model", weights]
    result = CliRunner().invoke(main, args)
    line = _one_error_line(result, 1)
    assert "already exists" in line and out.read_text() == "precious"
    assert "--overwrite" in line and "overwrite=True" not in line  # CLI words for CLI users
    result = CliRunner().invoke(main, args + ["--overwrite"])
    assert result.exit_code == 0, result.output
    assert len(Table.read(out)) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_export_refuses_existing_output(tmp_path):
    ckpt, out = tmp_path / "last.ckpt", tmp_path / "w.safetensors"
    ckpt.write_bytes(b"not a checkpoint")
    out.write_bytes(b"old weights")
    result = CliRunner().invoke(main, ["export", str(ckpt), "-o", str(out)])
    assert "already exists" in _one_error_line(result, 1) and out.read_bytes() == b"old weights"
    result = CliRunner().invoke(main, ["export", str(ckpt), "-o", str(ckpt)])
    assert "one of the inputs" in _one_error_line(result, 1) and ckpt.read_bytes() == b"not a checkpoint"


def test_plot_output_checked_before_computing(spectrum_file, tmp_path, monkeypatch):
    monkeypatch.setattr(api, "reconstruct", lambda *a, **k: pytest.fail("computed before the output check"))
    result = CliRunner().invoke(main, ["plot", str(spectrum_file), "-o", str(tmp_path / "no" / "p.png")])
    assert "does not exist" in _one_error_line(result, 1)
    png = tmp_path / "p.png"
    png.write_bytes(b"old plot")
    result = CliRunner().invoke(main, ["plot", str(spectrum_file), "-o", str(png)])
    assert "already exists" in _one_error_line(result, 1) and png.read_bytes() == b"old plot"


def test_train_into_a_used_run_folder_needs_resume_or_overwrite(tmp_path):
    pytest.importorskip("lightning")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"old run")
    corpus = tmp_path / "c.h5"
    corpus.write_bytes(b"not a corpus")
    result = CliRunner().invoke(main, ["train", str(corpus), "-o", str(run)])
    line = _one_error_line(result, 1)
    assert "--resume" in line and "--overwrite" in line and "=True" not in line
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == b"old run"


# --------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("suffix", [".ecsv", ".fits", ".h5"])
def test_embed_writes_a_table_with_provenance(weights, model, tmp_path, suffix):
    bad = tmp_path / "broken.fits"
    bad.write_bytes(b"not a fits file")
    out = tmp_path / f"emb{suffix}"
    result = CliRunner().invoke(main, ["embed", "--examples", str(bad), "-o", str(out), "--model", weights,
                                       "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "broken.fits" in result.stderr
    table = Table.read(out)
    ids = example_paths()
    assert len(table) == len(ids) and table.colnames[:3] == ["id", "source_file", "survey"]
    assert table["embedding"].shape == (len(ids), DIM)
    np.testing.assert_allclose(table["embedding"], api.embed(example_paths(), model=model), atol=1e-5)
    meta = {k.upper(): v for k, v in table.meta.items()}
    assert meta["MODEL"] == "tiny.safetensors" and len(meta["MODELSHA"]) == 64
    assert meta["DTYPE"] == "float32" and meta["DEVICE"] == "cpu" and meta["OMNIVERS"]
    assert meta["KIND"] == "embeddings"


def test_embed_table_keeps_ids_with_newlines(model, tmp_path):
    from omnispectra.results import write_table

    wave = 4000.0 + np.arange(400) * 1.5
    flux = 1.0 + 0.3 * np.sin(wave / 40.0)
    from specutils import Spectrum

    spectra = [Spectrum(spectral_axis=wave * u.AA, flux=flux * u.Jy, meta={"id": "a\nb"}),
               Spectrum(spectral_axis=wave * u.AA, flux=2 * flux * u.Jy, meta={"id": "c,\"d\""})]
    table = api.embed(spectra, model=model, as_table=True)
    for suffix in (".ecsv", ".h5"):
        back = Table.read(write_table(table, tmp_path / f"e{suffix}"))
        assert list(back["id"]) == ["a\nb", "c,\"d\""]


def test_anomaly_and_reconstruction_tables(model, tmp_path):
    from omnispectra.results import write_table

    paths = example_paths()
    table = api.anomaly_score(paths, model=model, n_masks=2, as_table=True)
    assert table.colnames == ["id", "source_file", "survey", "anomaly", "noise_estimated", "flag"]
    assert len(table) == len(paths)
    np.testing.assert_allclose(table["anomaly"], api.anomaly_statistic(paths, model=model, n_masks=2)[0])
    # the MILES example has no uncertainties: its statistic exists, with an estimated noise
    assert list(table["noise_estimated"]) == ["MILES" in str(p) for p in paths]
    assert np.all(np.isfinite(table["anomaly"]))
    assert table.meta["NMASKS"] == 2 and table.meta["KIND"] == "anomaly" and "ENCSHA" in table.meta
    rec = api.reconstruct(paths[0], model=model)
    back = Table.read(write_table(rec.to_table(), tmp_path / "r.ecsv"))
    assert back["flux"].unit == back["reconstruction"].unit and back["flux"].unit is not None
    np.testing.assert_allclose(back["reconstruction"][0], rec.reconstruction)


def test_anomaly_command(weights, tmp_path):
    out = tmp_path / "a.ecsv"
    result = CliRunner().invoke(main, ["anomaly", "--examples", "--model", weights, "-o", str(out),
                                      "--no-table"])
    assert result.exit_code == 0, result.output
    assert "anomaly" not in result.stdout
    table = Table.read(out)
    assert len(table) == len(example_paths()) and np.all(np.isfinite(table["anomaly"]))
    assert "chi-square" in table["anomaly"].description and "anomaly_score" not in table.colnames


def test_printed_table_by_precision_written_table_in_full(weights, tmp_path):
    out = tmp_path / "a.ecsv"
    result = CliRunner().invoke(main, ["anomaly", "--examples", "--model", weights, "-o", str(out)])
    assert result.exit_code == 0, result.output
    table = Table.read(out)
    lines = result.stdout.splitlines()
    column = lines[0].split().index("anomaly")
    printed = [line.split()[column] for line in lines[2:2 + len(table)]]
    assert printed == [format(v, ".3f") for v in table["anomaly"]]  # 3 decimals, not 17 digits
    assert table["anomaly"].info.format == ".3f"
    assert any(len(repr(float(v))) > 10 for v in table["anomaly"])  # the file keeps every digit


# --------------------------------------------------------------------------- errors and messages


@pytest.mark.parametrize("device", ["gpu", "cuda:7"] + ([] if torch.cuda.is_available() else ["cuda"]))
def test_unusable_device_is_one_line_usage_error(device):
    result = CliRunner().invoke(main, ["embed", "--examples", "-o", "unused.ecsv", "--device", device])
    assert "device" in _one_error_line(result, 2)


def test_export_of_a_bad_checkpoint_is_one_line(tmp_path):
    pytest.importorskip("lightning")
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"\x80\x02junk")
    result = CliRunner().invoke(main, ["export", str(ckpt), "-o", str(tmp_path / "w.safetensors")])
    line = _one_error_line(result, 1)
    assert "weights_only" not in line and "last.ckpt" in line
    assert not (tmp_path / "w.safetensors").exists()


def test_train_errors_are_one_line(tmp_path):
    pytest.importorskip("lightning")
    bad_yaml = tmp_path / "c.yaml"
    bad_yaml.write_text("lr: [1, 2\n")
    corpus = tmp_path / "c.h5"
    corpus.write_bytes(b"corrupt corpus")
    result = CliRunner().invoke(main, ["train", str(corpus), "--config", str(bad_yaml),
                                      "-o", str(tmp_path / "r")])
    assert "YAML" in _one_error_line(result, 2)
    result = CliRunner().invoke(main, ["train", str(corpus), "-o", str(tmp_path / "r2")])
    assert "c.h5" in _one_error_line(result, 1)
    result = CliRunner().invoke(main, ["train", str(corpus), "-o", str(tmp_path / "r3"), "--resume"])
    assert "no checkpoint" in _one_error_line(result, 1)


def test_cache_pointing_at_a_file(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.write_text("a file")
    monkeypatch.setenv("OMNISPECTRA_CACHE", str(cache))
    result = CliRunner().invoke(main, ["info"])  # reported on the models line, no traceback
    assert result.exit_code == 0 and "Traceback" not in result.output
    cache_lines = [line for line in result.output.splitlines() if "OMNISPECTRA_CACHE" in line]
    assert cache_lines[0].startswith("models")


def test_info_lists_readers_and_versions():
    result = CliRunner().invoke(main, ["info"])
    assert result.exit_code == 0, result.output
    for name in ("numpy", "astropy", "specutils", "torch", "readers"):
        assert any(line.startswith(name) for line in result.output.splitlines()), name
    assert "sdss" in result.output
    # every bundled probe is named, the stellar pair included
    assert "probe-stellar-params-survey.safetensors" in result.output
    assert "stellar_params_survey" in result.output


def test_verbosity_and_lightning_tips(caplog):
    library = logging.getLogger("omnispectra.inference.inputs")
    tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        with logging_for(0):
            assert not library.isEnabledFor(logging.INFO) and library.isEnabledFor(logging.WARNING)
            tips.info("💡 Tip: For seamless cloud uploads and versioning, try installing litmodels")
            tips.info("GPU available: False")
        with logging_for(1):
            assert library.isEnabledFor(logging.INFO)
        with logging_for(-1):
            assert not library.isEnabledFor(logging.WARNING)
    messages = [r.getMessage() for r in caplog.records]
    assert "GPU available: False" in messages and not any("Tip:" in m for m in messages)


def test_global_quiet_and_verbose_options(weights, tmp_path):
    out = tmp_path / "e.ecsv"
    result = CliRunner().invoke(main, ["-q", "embed", "--examples", "-o", str(out), "--model", weights])
    assert result.exit_code == 0 and result.stderr == "", result.output
    result = CliRunner().invoke(main, ["-v", "embed", "--examples", str(tmp_path / "missing.fits"),
                                       "-o", str(tmp_path / "f.ecsv"), "--model", weights])
    assert result.exit_code == 0, result.output
    assert "missing.fits" in result.stderr


def test_progress_has_a_total_and_moves_per_batch(model):
    class Bar:
        total = None

        def __init__(self):
            self.updates = []

        def update(self, n):
            self.updates.append(n)

    bar = Bar()
    paths = example_paths()
    api.embed(paths, model=model, batch_size=1, progress=bar)
    assert bar.total == len(paths) and bar.updates == [1] * len(paths)
