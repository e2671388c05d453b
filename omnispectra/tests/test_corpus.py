"""HDF5 corpus: bit-exact round trips, atomic writes, bad inputs, validation, CLI."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from astropy import units as u
from astropy.nddata import InverseVariance, StdDevUncertainty
from click.testing import CliRunner
from specutils import Spectrum

from omnispectra import CorpusError
from omnispectra.cli import main
from omnispectra.corpus import (
    FORMAT_VERSION,
    META_COLUMNS,
    build_corpus,
    corpus_files,
    corpus_info,
    is_corpus,
    open_corpus,
)
from omnispectra.exceptions import OutputIsInputError

from .helpers import data_dir

FLUX_UNIT = u.Unit("1e-17 erg / (s cm2 Angstrom)")


def make_spectrum(k: int, survey: str, n_pix: int, rng: np.random.Generator, **meta) -> Spectrum:
    """A synthetic spectrum obeying the omnispectra.io reader contract."""
    wave = np.sort(rng.uniform(3600.0, 9000.0, n_pix))  # irregular, increasing, float64
    flux = rng.normal(5.0, 1.0, n_pix).astype(np.float32)
    ivar = rng.uniform(0.5, 2.0, n_pix).astype(np.float32)
    mask = rng.random(n_pix) < 0.05
    full = {"id": f"{survey}-{k}", "object_id": f"{survey}-obj{k // 2}", "survey": survey,
            "source_file": f"/data/{survey}/{k}.fits", "format": f"{survey}-test", "rest_frame": False}
    full.update(meta)
    return Spectrum(spectral_axis=wave * u.AA, flux=flux * FLUX_UNIT, uncertainty=InverseVariance(ivar),
                    mask=mask, meta=full)


def make_spectra(n_per_survey: int = 6, surveys=("sdss", "miles"), seed: int = 0) -> list[Spectrum]:
    rng = np.random.default_rng(seed)
    out = []
    for s in surveys:
        for k in range(n_per_survey):
            labels = {"z": 0.1 * k, "class": "GALAXY"} if k % 2 else {"teff": 5000.0 + k, "logg": 4.5}
            out.append(make_spectrum(k, s, int(rng.integers(30, 400)), rng, **labels))
    return out


def assert_same_spectrum(a: Spectrum, b: Spectrum) -> None:
    """b (read back) equals a (input) bit for bit, flux cast to float32, ivar float64."""
    wa = a.spectral_axis.to_value(u.AA, equivalencies=u.spectral())
    np.testing.assert_array_equal(b.spectral_axis.to_value(u.AA), wa)
    assert b.spectral_axis.dtype == np.float64
    np.testing.assert_array_equal(b.flux.value, np.asarray(a.flux.value, dtype=np.float32))
    assert b.flux.unit == a.flux.unit
    if a.uncertainty is None or (a.meta or {}).get("ivar_is_placeholder"):
        assert b.uncertainty is None  # a file's placeholder errors are no uncertainties
    else:
        assert isinstance(b.uncertainty, InverseVariance)
        ivar = (a.uncertainty.array if isinstance(a.uncertainty, InverseVariance)
                else a.uncertainty.represent_as(InverseVariance).array)
        expected = np.asarray(ivar, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            expected = np.where(np.isfinite(expected), expected, 0.0)
        assert b.uncertainty.array.dtype == np.float64
        np.testing.assert_array_equal(b.uncertainty.array, expected)
    mask = np.zeros(len(wa), bool) if a.mask is None else np.asarray(a.mask, bool)
    np.testing.assert_array_equal(b.mask, mask)
    for key, value in a.meta.items():
        if key in {"id", "object_id", "survey", "source_file", "format", "class", "subclass"}:
            assert b.meta[key] == str(value)
        elif key == "rest_frame":
            assert b.meta[key] is bool(value)
        elif key in {"z", "z_err", "teff", "logg", "fe_h"} and value is not None and np.isfinite(value):
            assert b.meta[key] == float(value)


def test_roundtrip_synthetic_per_survey_files(tmp_path):
    spectra = make_spectra()
    # an uncertainty-free spectrum, a StdDev one, a float64 flux and a descending axis
    rng = np.random.default_rng(5)
    s = make_spectrum(90, "sdss", 50, rng)
    spectra.append(Spectrum(spectral_axis=s.spectral_axis, flux=s.flux, mask=s.mask, meta=s.meta))
    s = make_spectrum(91, "miles", 60, rng, fe_h=-0.5)
    spectra.append(Spectrum(spectral_axis=s.spectral_axis, flux=s.flux.astype(np.float64) * 1.0000001,
                            uncertainty=StdDevUncertainty(np.full(60, 0.5)), meta=s.meta))
    report = build_corpus(spectra, tmp_path / "corpus.h5", progress=False)
    assert report.counts == {"sdss": 7, "miles": 7}
    assert sorted(Path(p).name for p in report.outputs.values()) == ["corpus-miles.h5", "corpus-sdss.h5"]
    assert not (tmp_path / "corpus.h5").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus-miles.h5", "corpus-sdss.h5"]  # no temp left
    by_id = {s.meta["id"]: s for s in spectra}
    for path in report.outputs.values():
        with open_corpus(path) as reader:
            assert reader.format_version == FORMAT_VERSION
            assert reader.attrs["flux_unit"] == FLUX_UNIT.to_string()
            table = reader.metadata
            assert list(table.colnames) == [*META_COLUMNS, "n_pixels"]
            for i in range(len(reader)):
                original = by_id[table["id"][i]]
                assert_same_spectrum(original, reader.spectrum(i))
                assert reader.lengths[i] == len(original.flux) == table["n_pixels"][i]
            # missing labels: NaN / empty string
            assert np.isnan(table["z_err"]).all() and (table["subclass"] == "").all()
            with h5py.File(path) as f:  # ragged, compressed, no padding
                assert f["spectra/flux"].shape == (int(reader.lengths.sum()),)
                assert f["spectra/flux"].compression == "gzip" and f["spectra/flux"].chunks
                assert f["spectra/offsets"].dtype == np.int64
    assert len(open_corpus(report.outputs["sdss"]).spectrum(-1).flux) == 50  # negative index


def test_survey_override_and_filter(tmp_path):
    spectra = make_spectra(3, surveys=("sdss", "miles", "desi"))
    one = build_corpus(spectra, tmp_path / "all.h5", survey="mixed", progress=False)
    assert one.outputs == {"mixed": str(tmp_path / "all.h5")}
    assert set(open_corpus(tmp_path / "all.h5").metadata["survey"]) == {"mixed"}
    only = build_corpus(spectra, tmp_path / "dir", only_surveys=["DESI"], progress=False)
    assert only.outputs == {"desi": str(tmp_path / "dir" / "desi.h5")}
    assert len(only.skipped_spectra) == 6
    with pytest.raises(FileExistsError):
        build_corpus(spectra, tmp_path / "all.h5", progress=False)
    # duplicates are skipped, not stored twice
    dup = build_corpus(spectra + spectra[:2], tmp_path / "dup.h5", overwrite=True, survey="x", progress=False)
    assert dup.counts == {"x": 9} and [why for _, why in dup.skipped_spectra] == ["duplicate id"] * 2


def _npz_reader(path: Path):
    """Test reader: one spectrum per .npz file (raises on anything else, like a real reader)."""
    with np.load(path) as data:
        n = data["flux"].size
        return [Spectrum(spectral_axis=data["wave"] * u.AA, flux=data["flux"] * FLUX_UNIT,
                         uncertainty=InverseVariance(data["ivar"]), mask=np.zeros(n, bool),
                         meta={"id": path.stem, "survey": "npz", "source_file": str(path)})]


def _write_npz(path: Path, n: int = 40, seed: int = 0, wave=None) -> None:
    rng = np.random.default_rng(seed)
    wave = np.linspace(4000, 5000, n) if wave is None else wave
    np.savez(path, wave=wave, flux=rng.normal(1, 0.1, n).astype(np.float32),
             ivar=np.ones(n, np.float32))


def test_bad_inputs_are_reported_and_skipped(tmp_path):
    good = [tmp_path / f"good{i}.npz" for i in range(3)]
    for i, p in enumerate(good):
        _write_npz(p, seed=i)
    text = tmp_path / "notes.npz"
    text.write_text("this is not a spectrum")
    nonmono = tmp_path / "nonmono.npz"
    _write_npz(nonmono, n=5, wave=np.array([4000.0, 4001, 4001, 4003, 4004]))
    inputs = [good[0], text, tmp_path / "missing.npz", good[1], nonmono, good[2]]
    report = build_corpus(inputs, tmp_path / "out" / "c.h5", reader=_npz_reader, progress=False)
    assert report.counts == {"npz": 3}
    assert report.n_files == 6 and report.n_failed == 2
    failed = {Path(f.path).name: f for f in report.failed_files}
    assert set(failed) == {"notes.npz", "missing.npz"}
    # one rule for bad paths (omnispectra.io.sources): a missing file is a SpectrumFormatError
    assert failed["missing.npz"].error == "SpectrumFormatError"
    assert "file not found" in failed["missing.npz"].message
    skipped = [(name, why.split(":")[0]) for name, why in report.skipped_spectra]
    assert skipped == [("nonmono", "InvalidSpectrumError")]
    assert "notes.npz" in report.summary() and "2 file(s) skipped" in report.summary()
    assert len(open_corpus(tmp_path / "out" / "c.h5")) == 3


def test_nothing_readable_raises_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_text("x")
    with pytest.raises(ValueError, match="no spectrum could be stored"):
        build_corpus([bad], tmp_path / "c.h5", reader=_npz_reader, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz"]


def test_interrupted_build_is_atomic(tmp_path):
    files = []
    for i in range(3):
        files.append(tmp_path / f"s{i}.npz")
        _write_npz(files[-1], seed=i)
    out = tmp_path / "c.h5"
    build_corpus(files[:1], out, reader=_npz_reader, progress=False)
    before = out.read_bytes()
    calls = []

    def interrupted(path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the build
        return _npz_reader(path)

    with pytest.raises(KeyboardInterrupt):
        build_corpus(files, out, reader=interrupted, overwrite=True, progress=False)
    assert out.read_bytes() == before  # the good corpus is untouched
    assert len(open_corpus(out)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5", "s0.npz", "s1.npz", "s2.npz"]
    calls.clear()
    with pytest.raises(KeyboardInterrupt):  # no previous output: nothing appears
        build_corpus(files, tmp_path / "new.h5", reader=interrupted, progress=False)
    assert not (tmp_path / "new.h5").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_never_overwrites_an_input(tmp_path):
    src = tmp_path / "s.npz"
    _write_npz(src)
    with pytest.raises(OutputIsInputError, match="one of the inputs"):
        build_corpus([src], src, reader=_npz_reader, overwrite=True, progress=False)
    assert np.load(src)["flux"].size == 40


def test_corpus_error_on_bad_files(tmp_path):
    build_corpus(make_spectra(2), tmp_path / "good.h5", survey="s", progress=False)
    text = tmp_path / "a.txt"
    text.write_text("hello")
    with pytest.raises(CorpusError, match="a.txt is not an HDF5 file"):
        open_corpus(text)
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(CorpusError, match="plain.h5 is an HDF5 file but not an omnispectra corpus"):
        open_corpus(plain)
    future = tmp_path / "future.h5"
    future.write_bytes((tmp_path / "good.h5").read_bytes())
    with h5py.File(future, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(CorpusError, match=rf"future.h5 has corpus format_version {FORMAT_VERSION + 1}"):
        open_corpus(future)
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes((tmp_path / "good.h5").read_bytes())
    with h5py.File(corrupt, "r+") as f:
        del f["spectra/offsets"]
        f["spectra/offsets"] = np.array([0, 5], dtype=np.int64)
    with pytest.raises(CorpusError, match="corrupt"):
        open_corpus(corrupt)
    with pytest.raises(CorpusError, match="no such corpus file"):
        open_corpus(tmp_path / "absent.h5")
    assert is_corpus(tmp_path / "good.h5") and not is_corpus(plain) and not is_corpus(text)
    assert corpus_files(tmp_path) == [tmp_path / "corrupt.h5", tmp_path / "future.h5",
                                      tmp_path / "good.h5", plain]


def test_reader_survives_fork_and_pickle(tmp_path):
    import multiprocessing
    import pickle

    build_corpus(make_spectra(2), tmp_path / "c.h5", survey="s", progress=False)
    reader = open_corpus(tmp_path / "c.h5")
    expected = reader.arrays(1)[1]
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone.arrays(1)[1], expected)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply(_flux_sum, (reader, 1))
    assert got == float(expected.sum())


def _flux_sum(reader, i):
    return float(reader.arrays(i)[1].sum())


def test_corpus_info_and_cli(tmp_path):
    spectra = make_spectra(4, surveys=("sdss", "miles"))
    build_corpus(spectra, tmp_path / "c.h5", progress=False)
    info = corpus_info(tmp_path)
    assert info["n_spectra"] == 8 and set(info["surveys"]) == {"sdss", "miles"}
    sdss = info["surveys"]["sdss"]
    lengths = [len(s.flux) for s in spectra if s.meta["survey"] == "sdss"]
    assert sdss["pixels"]["min"] == min(lengths) and sdss["pixels"]["max"] == max(lengths)
    assert sdss["n_objects"] == 2
    assert sdss["labels"] == {"class": 2, "subclass": 0, "z": 2, "z_err": 0, "teff": 2, "logg": 2, "fe_h": 0}
    waves = [s.spectral_axis.value for s in spectra if s.meta["survey"] == "sdss"]
    assert sdss["wavelength"]["min"] == min(w[0] for w in waves)

    runner = CliRunner()
    result = runner.invoke(main, ["corpus", "info", str(tmp_path / "c-sdss.h5"),
                                  str(tmp_path / "c-miles.h5")])
    assert result.exit_code == 0, result.output
    assert "total: 8 spectra" in result.output
    assert "[miles] 4 spectra of 2 objects" in result.output
    assert "labels (non-missing): class=2, z=2, teff=2, logg=2" in result.output
    result = runner.invoke(main, ["corpus", "info", "--json", str(tmp_path / "c-sdss.h5")])
    assert result.exit_code == 0 and '"n_spectra": 4' in result.output
    (tmp_path / "t.txt").write_text("x")
    result = runner.invoke(main, ["corpus", "info", str(tmp_path / "t.txt")])
    assert result.exit_code == 1 and "not an HDF5 file" in result.output


# ----------------------------------------------------------------- real spectra

def _io_read():
    try:
        from omnispectra.io import read
    except ImportError:
        pytest.skip("omnispectra.io.read is not available yet")
    return read


REAL_FILES = {  # a few small files per survey of the shared data folder
    "sdss": ["sdss/gelato/spec-0266-51602-0638.fits", "sdss/pyqsofit/spec-0266-51602-0013.fits"],
    "miles": ["miles/MILES_res2.50_star_m0001V.fits", "miles/MILES_res2.50_star_m0002V.fits"],
    "apogee": ["apogee/*/aspcapStar-r6-l30e.2-2M0*.fits"],
    "lamost": ["lamost/spec-58397-EG014118N254444M01_sp03-031.fits"],
    "desi": ["desi/coadd-4-80613-thru20210324.fits"],
    "manga": ["manga/MaNGA_test_spectra.fits.gz"],
}


def real_files(limit_per_survey: int = 1) -> list[Path]:
    root = data_dir()
    if root is None:
        pytest.skip("real spectra folder ../shared/data is absent (set OMNISPECTRA_DATA_DIR)")
    out = []
    for patterns in REAL_FILES.values():
        found = [p for pat in patterns for p in sorted(root.glob(pat))][:limit_per_survey]
        out += found
    if len(out) < 3:
        pytest.skip("too few real spectra found")
    return out


def test_roundtrip_real_spectra_bit_exact(tmp_path):
    read = _io_read()
    files = real_files()
    report = build_corpus(files, tmp_path / "real.h5", progress=False)
    assert report.n_spectra > 0
    by_id = {}
    for path in files:
        try:
            for spec in read(path):
                by_id[spec.meta["id"]] = spec
        except Exception:  # unreadable here too: must be among the build's failures
            assert str(path) in {f.path for f in report.failed_files}
    assert len(report.outputs) >= 3, report.summary()  # several surveys, one file each
    n = 0
    for path in report.outputs.values():
        reader = open_corpus(path)
        for i in range(len(reader)):
            back = reader.spectrum(i)
            assert_same_spectrum(by_id[back.meta["id"]], back)
            n += 1
    assert n == report.n_spectra == len(by_id)


def test_cli_build_real(tmp_path):
    _io_read()
    files = real_files()
    result = CliRunner().invoke(main, ["corpus", "build", *map(str, files), "-o", str(tmp_path / "out"),
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(written) >= 3 and all(name.endswith(".h5") for name in written)
    result = CliRunner().invoke(main, ["corpus", "info", str(tmp_path / "out")])
    assert result.exit_code == 0 and "survey(s)" in result.output


@pytest.mark.slow
def test_full_real_corpus_reads_back_bit_exactly(tmp_path):
    """Every real spectrum of the shared data folder survives build -> read bit for bit."""
    from omnispectra.io import iter_spectra

    root = data_dir()
    if root is None:
        pytest.skip("real spectra folder ../shared/data is absent")
    report = build_corpus([root], tmp_path / "all", progress=False)
    originals = {}
    spectra = iter_spectra([root], on_error="skip")
    for spec in spectra:
        originals[spec.meta["id"]] = spec
    assert report.n_spectra == len(originals) > 1000
    assert len(report.outputs) >= 8  # every survey family in its own file
    n = 0
    for path in report.outputs.values():
        with open_corpus(path) as reader:
            for i in range(len(reader)):
                back = reader.spectrum(i)
                assert_same_spectrum(originals[back.meta["id"]], back)
                n += 1
    assert n == len(originals)


def test_folder_output_checked_before_the_build_and_stale_files_removed(tmp_path):
    spectra = make_spectra(2, surveys=("sdss", "miles", "desi"))
    out = tmp_path / "dir"
    first = build_corpus(spectra, out, progress=False)
    assert sorted(first.outputs) == ["desi", "miles", "sdss"]

    def never(_path):  # pragma: no cover - the refusal must come before any reading
        raise AssertionError("inputs were read before the output check")

    src = tmp_path / "s.npz"
    _write_npz(src)
    with pytest.raises(FileExistsError, match="already exists"):
        build_corpus([src], out, reader=never, progress=False)
    # --overwrite with fewer surveys: the old per-survey files go, so they are not counted again
    second = build_corpus(spectra[:2], out, overwrite=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [f"{s}.h5" for s in second.outputs] == ["sdss.h5"]
    assert corpus_info(out)["n_spectra"] == 2
    # a file output: x.h5 and x-<survey>.h5 of an earlier build
    several = build_corpus(spectra, tmp_path / "x.h5", progress=False)
    assert len(several.outputs) == 3
    one = build_corpus(spectra[:2], tmp_path / "x.h5", overwrite=True, progress=False)
    assert one.outputs == {"sdss": str(tmp_path / "x.h5")}
    assert not list(tmp_path.glob("x-*.h5"))


_HANGING_BUILD = """
import sys, time
from pathlib import Path
import numpy as np
from astropy import units as u
from specutils import Spectrum
from omnispectra.corpus import build_corpus

ready = Path(sys.argv[2])

def reader(path):
    if path.name == "hang.npz":  # the first file is in the temporary corpus: say so, then hang
        ready.write_text("ready")
        time.sleep(600)
    wave = np.linspace(4000.0, 5000.0, 2000)
    return [Spectrum(spectral_axis=wave * u.AA, flux=np.full(2000, 1.0 + k, np.float32) * u.Jy,
                     meta={"id": f"{path.stem}-{k}", "survey": "sdss"}) for k in range(20)]

build_corpus([sys.argv[3], sys.argv[4]], sys.argv[1], reader=reader, progress=False, chunk_size=64)
"""


def _start_hanging_build(tmp_path: Path, out: Path, name: str):
    """A real `build_corpus` in another process, stopped while its temporary file is half written."""
    import os
    import subprocess
    import sys
    import time

    import omnispectra

    script, ready = tmp_path / "hang.py", tmp_path / f"{name}.ready"
    script.write_text(_HANGING_BUILD)
    for stem in ("first", "hang"):
        (tmp_path / f"{stem}.npz").write_bytes(b"input")
    env = {**os.environ, "PYTHONPATH": str(Path(omnispectra.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(ready), str(tmp_path / "first.npz"),
                             str(tmp_path / "hang.npz")], env=env)
    return proc, ready, time


def _wait_ready(proc, ready, time):
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None, "the build to be killed ended early"
        assert time.monotonic() < deadline, "the build to be killed never got going"
        time.sleep(0.1)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to tell processes apart")
def test_temporary_files_of_a_killed_build_are_removed_by_the_next_build(tmp_path):
    import signal

    out = tmp_path / "out" / "c.h5"
    killed, ready_k, time = _start_hanging_build(tmp_path, out, "killed")
    alive, ready_a, _ = _start_hanging_build(tmp_path, out, "alive")
    try:
        _wait_ready(killed, ready_k, time)
        _wait_ready(alive, ready_a, time)
        temporaries = sorted((tmp_path / "out").glob(".sdss.*.h5.tmp"))
        assert len(temporaries) == 2  # one per running build
        killed.send_signal(signal.SIGKILL)
        killed.wait(30)
        dead = next(p for p in temporaries if f"-{killed.pid}-" in p.name)
        live = next(p for p in temporaries if f"-{alive.pid}-" in p.name)
        assert dead.stat().st_size > 40_000  # the partial corpus: 20 spectra of 2000 pixels flushed
        # a dead build's file for another output, and a file of unknown origin: both kept
        other = dead.with_name(re.sub(r"\.build-[0-9a-f]{8}-", ".build-00000000-", dead.name))
        assert other != dead
        other.write_bytes(b"x")
        unknown = dead.with_name(".sdss.abc123.h5.tmp")
        unknown.write_bytes(b"x")
        _write_npz(tmp_path / "good.npz")
        report = build_corpus([tmp_path / "good.npz"], out, reader=_npz_reader, progress=False)
        assert report.removed_temporaries == [str(dead)] and not dead.exists()
        assert live.exists() and other.exists() and unknown.exists()  # the live build's file is kept
        assert "removed 1 temporary file(s) left by killed builds" in report.summary()
        assert len(open_corpus(out)) == 1
    finally:
        for proc in (killed, alive):
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(30)
    report = build_corpus([tmp_path / "good.npz"], out, reader=_npz_reader, progress=False, overwrite=True)
    assert report.removed_temporaries == [str(live)] and not live.exists()
