import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from omnispectra import CheckpointError
from omnispectra.cli import main
from omnispectra.collate import collate
from omnispectra.corpus import build_corpus
from omnispectra.examples import example_paths
from omnispectra.pretrained import load_weights
from omnispectra.tokenizer import tokenize
from omnispectra.training.train import TrainConfig, export_checkpoint, load_checkpoint_model, train

from .helpers import data_dir, sdss_arrays

MICRO = {"dim": 32, "n_layers": 1, "n_heads": 2}

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning:lightning.*", "ignore::DeprecationWarning:lightning.*",
    "ignore:.*LeafSpec.*:DeprecationWarning",
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small real corpus: the bundled examples plus real spectra of several surveys.

    Without the shared data folder, small synthetic spectra of two surveys stand in for
    them, so that the split has a validation set and an epoch has several batches.
    """
    out = tmp_path_factory.mktemp("corpus")
    inputs: list = [str(p) for p in example_paths()]
    root = data_dir()
    if root is not None:
        inputs += [str(root / "sdss" / "gelato"), str(root / "lamost" / "pylasp")]
        inputs += sorted(str(p) for p in (root / "miles").glob("MILES_res2.50_star_m00[0-2]*V.fits"))
    else:
        inputs += _synthetic_spectra(24)
    report = build_corpus(inputs, out, progress=False)
    assert report.n_spectra >= 20
    return sorted(report.outputs.values())


def _synthetic_spectra(n):
    from astropy import units as u
    from astropy.nddata import InverseVariance
    from specutils import Spectrum

    rng = np.random.default_rng(0)
    spectra = []
    for k in range(n):
        wave = np.geomspace(3600, 9000, int(rng.integers(500, 1500)))
        flux = 1 + 0.3 * np.sin(wave / rng.uniform(20, 80)) + rng.normal(0, 0.05, wave.size)
        survey = "synth_a" if k % 2 else "synth_b"
        spectra.append(Spectrum(spectral_axis=wave * u.AA, flux=flux * u.dimensionless_unscaled,
                                uncertainty=InverseVariance(np.full(wave.size, 400.0)),
                                meta={"id": f"synth-{k}", "object_id": f"synth-{k}", "survey": survey}))
    return spectra


def _config(corpus, tmp_path, name, **kw):
    values = dict(corpus=corpus, output=str(tmp_path / name), model=MICRO, batch_size=4, max_steps=10,
                  checkpoint_every=3, val_every=5, val_fraction=0.2, progress=False, lr=1e-3)
    values.update(kw)
    return TrainConfig.from_preset("tiny", **values)


def _train_losses(run_dir):
    """Per-step train loss over every (re)start of a run."""
    losses = {}
    for path in sorted((run_dir / "logs").glob("version_*/metrics.csv")):
        with open(path) as fh:
            losses.update({int(r["step"]): float(r["train_loss"])
                           for r in csv.DictReader(fh) if r.get("train_loss")})
    return losses


def _fixed_batch_loss(model, corpus):
    """Mean masked-reconstruction loss over the whole corpus with fixed (epoch 0) masks."""
    from omnispectra.collate import Collator
    from omnispectra.dataset import SpectrumDataset

    ds = SpectrumDataset(corpus)
    collator = Collator(seed=0)
    losses = []
    with torch.no_grad():
        for start in range(0, len(ds), 8):
            batch = collator([ds[i] for i in range(start, min(start + 8, len(ds)))])
            if batch.loss_mask.any():
                losses.append(model.loss(batch).item())
    return float(np.mean(losses))


def test_loss_decreases_on_real_spectra(corpus, tmp_path):
    from omnispectra.model import OmniSpectra

    micro = {"dim": 64, "n_layers": 2, "n_heads": 2}
    result = train(_config(corpus, tmp_path, "run", max_steps=40, val_every=20, lr=3e-3, model=micro))
    trained = load_checkpoint_model(result["last_checkpoint"])
    torch.manual_seed(42)  # train() seeds 42 right before building the model: the exact init
    untrained = OmniSpectra(trained.config).eval()
    before, after = _fixed_batch_loss(untrained, corpus), _fixed_batch_loss(trained, corpus)
    assert after < 0.95 * before, (before, after)
    assert len(_train_losses(tmp_path / "run")) == 40
    assert result["val_loss"] is not None and np.isfinite(result["val_loss"])
    # checkpoints load without unpickling arbitrary objects
    ckpt = torch.load(result["last_checkpoint"], weights_only=True)
    assert ckpt["hyper_parameters"]["model_config"]["dim"] == 64
    assert (tmp_path / "run" / "config.yaml").is_file()


class _Crash(Exception):
    pass


class _CrashAtStep:
    """Kill a run at the start of a given step (after the checkpoint of the step before)."""

    def __new__(cls, step):
        import lightning as L

        class CrashAt(L.Callback):
            def on_train_batch_start(self, trainer, *args):
                if trainer.global_step == step:
                    raise _Crash(f"simulated crash at step {step}")

        return CrashAt()


def _batches_per_epoch(config):
    from omnispectra.training import SpectraDataModule

    data = SpectraDataModule(config.corpus, batch_size=config.batch_size, num_workers=0,
                             val_fraction=config.val_fraction, seed=config.seed)
    return len(data.train_sampler())


@pytest.mark.parametrize("where", ["mid_epoch", "epoch_end"])
def test_resume_equals_uninterrupted(corpus, tmp_path, where):
    probe = _config(corpus, tmp_path, "probe")
    per_epoch = _batches_per_epoch(probe)
    # crash mid-way through the second epoch, or right after the first epoch's last step
    crash = per_epoch + max(1, per_epoch // 2) if where == "mid_epoch" else per_epoch
    total = 2 * per_epoch + 3
    straight = _config(corpus, tmp_path, "straight", max_steps=total, checkpoint_every=1)
    train(straight)
    interrupted = _config(corpus, tmp_path, "resumed", max_steps=total, checkpoint_every=1)
    with pytest.raises(_Crash):
        train(interrupted, callbacks=[_CrashAtStep(crash)])
    last = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == crash
    train(interrupted, resume=True)
    a, b = _train_losses(tmp_path / "straight"), _train_losses(tmp_path / "resumed")
    assert sorted(a) == sorted(b) == list(range(total))
    np.testing.assert_allclose([b[s] for s in range(total)], [a[s] for s in range(total)], rtol=1e-5)


def test_resume_without_checkpoint_is_clear_error(corpus, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(_config(corpus, tmp_path, "nothing"), resume=True)


def test_export_round_trip_and_corrupt_checkpoints(corpus, tmp_path):
    result = train(_config(corpus, tmp_path, "run", max_steps=3))
    weights = tmp_path / "w.safetensors"
    digest = export_checkpoint(result["last_checkpoint"], weights)
    assert len(digest) == 64
    a, b = load_checkpoint_model(result["last_checkpoint"]), load_weights(weights)
    batch = collate([tokenize(*sdss_arrays())])
    with torch.no_grad():
        torch.testing.assert_close(a.embed(batch.tokens, batch.wavelength, batch.valid),
                                   b.embed(batch.tokens, batch.wavelength, batch.valid), rtol=0, atol=0)
    # corrupt: truncated, garbage, and a checkpoint whose tensors do not match its config
    raw = Path(result["last_checkpoint"]).read_bytes()
    (tmp_path / "trunc.ckpt").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "junk.ckpt").write_bytes(b"definitely not a checkpoint")
    ckpt = torch.load(result["last_checkpoint"], weights_only=True)
    ckpt["hyper_parameters"]["model_config"]["dim"] = 64
    torch.save(ckpt, tmp_path / "mismatch.ckpt")
    for name, match in [("trunc.ckpt", "not a readable"), ("junk.ckpt", "not a readable"),
                        ("mismatch.ckpt", "does not match"), ("absent.ckpt", "does not exist")]:
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint_model(tmp_path / name)


def test_interrupted_checkpoint_write_keeps_good_file(tmp_path, monkeypatch):
    from omnispectra.training.module import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    good = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["last.ckpt"]
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.ones(3))


def test_cli_train_and_export(corpus, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(main, ["train", *corpus, "--preset", "tiny", "--max-steps", "5", "-o", str(out),
                                  "--batch-size", "4", "--quiet",
                                  "--set", "model={dim: 32, n_layers: 1, n_heads: 2}",
                                  "--set", "val_fraction=0.2"])
    assert result.exit_code == 0, result.output
    assert "steps 5" in result.output
    assert "val_loss None" not in result.output  # a run shorter than val_every still validates
    saved = TrainConfig.from_yaml(out / "config.yaml")
    assert saved.max_steps == 5 and saved.model == MICRO and saved.corpus == corpus
    result = runner.invoke(main, ["export", str(out / "checkpoints" / "last.ckpt"),
                                  "-o", str(tmp_path / "w.st")])
    assert result.exit_code == 0, result.output
    assert "sha256" in result.output and (tmp_path / "w.st").is_file()
    result = runner.invoke(main, ["export", str(out / "checkpoints" / "last.ckpt"),
                                  "-o", str(tmp_path / "w.st")])
    assert result.exit_code == 1 and "--overwrite" in result.output  # never replaced silently
    bad = runner.invoke(main, ["train", *corpus, "--set", "no_such_setting=1", "-o", str(out)])
    assert bad.exit_code == 2 and "unknown training settings" in bad.output and "Traceback" not in bad.output
    used = runner.invoke(main, ["train", *corpus, "--preset", "tiny", "-o", str(out)])
    assert used.exit_code == 1 and "--resume" in used.output and "Traceback" not in used.output


def test_time_estimate_message():
    from omnispectra.training.module import time_estimate_message

    text = time_estimate_message(0.5, 3, 4, 2000)
    assert "0.5 s per step" in text and "1996 steps left to max_steps=2000" in text
    assert "about 17 min" in text and "--max-steps N" in text and "--max-time MINUTES" in text
    assert "about 2 h 46 min" in time_estimate_message(5.0, 3, 4, 2000)
    capped = time_estimate_message(0.5, 3, 4, 2000, max_time_minutes=5)
    assert "--max-time 5 stops the run after 5 min, near step 604" in capped


def test_train_logs_its_time_estimate(corpus, tmp_path, caplog, monkeypatch):
    import re

    from omnispectra.training import module

    # validation every 2 steps falls inside the timed steps: it is not counted as step time
    with caplog.at_level("INFO", logger="omnispectra.training.module"):
        result = train(_config(corpus, tmp_path, "estimate", max_steps=6, val_every=2))
    estimates = [r for r in caplog.records if "training pace" in r.getMessage()]
    assert len(estimates) == 1 and estimates[0].levelname == "INFO"  # a short run: info only
    text = estimates[0].getMessage()
    assert "the 2 steps left to max_steps=6" in text and "--max-steps" in text and "--max-time" in text
    pace = float(re.search(r"pace: ([0-9.e+-]+) s per step", text).group(1))
    assert 0 < 3 * pace < result["wall_time_s"]
    caplog.clear()
    monkeypatch.setattr(module, "LONG_RUN_MINUTES", 0.0)  # any run counts as long: a warning
    with caplog.at_level("INFO", logger="omnispectra.training.module"):
        train(_config(corpus, tmp_path, "estimate", max_steps=6), overwrite=True)
    assert [r.levelname for r in caplog.records if "training pace" in r.getMessage()] == ["WARNING"]
    caplog.clear()
    with caplog.at_level("INFO", logger="omnispectra.training.module"):
        train(_config(corpus, tmp_path, "estimate", max_steps=3), overwrite=True)
    assert not [r for r in caplog.records if "training pace" in r.getMessage()]  # over before measured


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(corpus, tmp_path):
    """A 2-process DDP run (gloo) through the real CLI entry point."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "omnispectra.cli", "train", *corpus, "--max-steps", "4", "-o", str(out),
           "--batch-size", "2", "--quiet", "--devices", "2", "--set", "accelerator=cpu",
           "--set", "strategy=ddp", "--set", "model={dim: 32, n_layers: 1, n_heads: 2}",
           "--set", "val_fraction=0.2", "--set", "checkpoint_every=2"]
    repo = str(Path(__file__).resolve().parents[2])  # this checkout's code, not an installed copy
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "steps 4" in proc.stdout and "Tip:" not in proc.stdout + proc.stderr  # no Lightning adverts
    assert (out / "checkpoints" / "last.ckpt").is_file()


def test_used_run_folder_is_refused_before_any_work(corpus, tmp_path):
    from omnispectra import OutputExistsError

    first = train(_config(corpus, tmp_path, "run", max_steps=2))
    run = tmp_path / "run"
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    config_text = (run / "config.yaml").read_text()
    with pytest.raises(OutputExistsError, match="already holds a training run"):
        train(_config(corpus, tmp_path, "run", max_steps=3, lr=5e-4))
    after = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert after == before and (run / "config.yaml").read_text() == config_text
    assert not list(run.rglob("last-v*.ckpt"))
    # overwrite: a clean start whose result names the checkpoint it wrote
    (run / "notes.txt").write_text("mine")
    second = train(_config(corpus, tmp_path, "run", max_steps=3, lr=5e-4), overwrite=True)
    assert second["steps"] == 3 and Path(second["last_checkpoint"]) == Path(first["last_checkpoint"])
    assert torch.load(second["last_checkpoint"], weights_only=True)["global_step"] == 3
    assert not list(run.rglob("last-v*.ckpt")) and (run / "notes.txt").read_text() == "mine"
    assert TrainConfig.from_yaml(run / "config.yaml").lr == 5e-4
    assert len(list((run / "logs").glob("version_*"))) == 1


def test_corpus_without_usable_spectra_is_a_typed_error(tmp_path):
    from astropy import units as u
    from specutils import Spectrum

    from omnispectra import CorpusError

    short = [Spectrum(spectral_axis=np.linspace(4000, 4100, 12) * u.AA, flux=np.ones(12) * u.Jy,
                      meta={"id": f"s{k}", "survey": "tiny"}) for k in range(3)]
    report = build_corpus(short, tmp_path / "c.h5", progress=False)
    with pytest.raises(CorpusError, match="no spectra to train on"):
        train(_config(sorted(report.outputs.values()), tmp_path, "run"))
    assert not (tmp_path / "run").exists()


def test_corrupt_corpus_and_bad_settings_are_typed_errors(corpus, tmp_path):
    from omnispectra import ConfigError, CorpusError

    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(CorpusError, match="not an HDF5 file"):
        train(_config([str(junk)], tmp_path, "run"))
    assert not (tmp_path / "run").exists()
    settings = tmp_path / "s.yaml"
    for text, match in [("max_steps: [1, 2\n", "not valid YAML"), ("- a\n- b\n", "mapping"),
                        ("batch_size: lots\n", "positive integer"), ("no_such: 1\n", "unknown training"),
                        ("model: {dim: 30, n_heads: 4}\n", "divisible"),
                        ("preset: huge\n", "unknown training preset")]:
        settings.write_text(text)
        with pytest.raises(ConfigError, match=match):
            train(TrainConfig.from_yaml(settings, base=_config(corpus, tmp_path, "run"))
                  if "preset" not in text else TrainConfig.from_yaml(settings))
    with pytest.raises(ConfigError, match="cannot read"):
        TrainConfig.from_yaml(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="no corpus"):
        train(_config([], tmp_path, "run"))
    assert not (tmp_path / "run").exists()


def test_export_refuses_bad_checkpoints_and_outputs_without_torch_advice(corpus, tmp_path):
    from omnispectra import OutputExistsError, OutputIsInputError

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "obj": _Crash("a pickled exception")}, evil)
    with pytest.raises(CheckpointError) as info:
        export_checkpoint(evil, tmp_path / "w.safetensors")
    assert "weights_only" not in str(info.value) and "other than tensors" in str(info.value)
    result = train(_config(corpus, tmp_path, "run", max_steps=1))
    ckpt = result["last_checkpoint"]
    with pytest.raises(OutputIsInputError):
        export_checkpoint(ckpt, ckpt, overwrite=True)
    (tmp_path / "w.safetensors").write_bytes(b"old")
    with pytest.raises(OutputExistsError):
        export_checkpoint(ckpt, tmp_path / "w.safetensors")
    assert (tmp_path / "w.safetensors").read_bytes() == b"old"
    assert len(export_checkpoint(ckpt, tmp_path / "w.safetensors", overwrite=True)) == 64
    # a checkpoint whose config asks for a huge model is refused before the model is built
    big = torch.load(ckpt, weights_only=True)
    big["hyper_parameters"]["model_config"].update(dim=8192, n_layers=64, n_heads=64)
    torch.save(big, tmp_path / "big.ckpt")
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint_model(tmp_path / "big.ckpt")
