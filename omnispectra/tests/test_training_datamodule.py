"""Mixing engine (simulated) and real spectra in pretraining."""

from __future__ import annotations

import numpy as np
import pytest

from omnispectra.training.datamodule import mixture_weights
from omnispectra.training.train import ConfigError, TrainConfig


def test_mixture_weights_give_the_engine_its_share():
    surveys = ["sdss"] * 30 + ["miles"] * 70 + ["engine_sdss"] * 600 + ["engine_desi"] * 400
    w = mixture_weights(surveys, {"miles": 0.5}, 0.75)
    n = {s: surveys.count(s) for s in set(surveys)}
    mass = {s: w[s] * n[s] for s in n}
    engine = mass["engine_sdss"] + mass["engine_desi"]
    assert engine / sum(mass.values()) == pytest.approx(0.75)
    assert w["miles"] == 0.5 and w["sdss"] == 1.0           # real surveys keep their weights
    assert w["engine_sdss"] == w["engine_desi"]               # engine surveys keep natural proportions
    assert mixture_weights(surveys, {}, 0.0)["engine_sdss"] == 0.0


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_mixture_weights_refuse_impossible_fractions(fraction):
    with pytest.raises(ValueError, match="engine_fraction"):
        mixture_weights(["sdss", "engine_sdss"], {}, fraction)


def test_mixture_weights_need_both_kinds():
    with pytest.raises(ValueError, match="needs engine and real"):
        mixture_weights(["sdss", "boss"], {}, 0.5)


def test_engine_fraction_is_checked_in_the_config():
    with pytest.raises(ConfigError, match="engine_fraction"):
        TrainConfig().replace(engine_fraction=1.2)
    assert TrainConfig().replace(engine_fraction=0.5).engine_fraction == 0.5


def test_engine_spectra_are_never_validation_spectra(tmp_path):
    from omnispectra.corpus import build_corpus
    from omnispectra.engine.generator import EngineSample
    from omnispectra.engine.stream import engine_spectrum
    from omnispectra.training import SpectraDataModule

    rng = np.random.default_rng(0)
    wave = np.linspace(4000, 8000, 400)
    samples = [EngineSample(wave, rng.normal(5, 1, wave.size), np.full(wave.size, 4.0),
                            np.zeros(wave.size, bool), {"class": "STAR", "z": 0.0},
                            {"id": f"engine:0:0:{i}", "object_id": f"engine:0:0:{i}", "survey": "sdss"})
               for i in range(40)]
    build_corpus([engine_spectrum(s) for s in samples], tmp_path / "engine")
    real = [engine_spectrum(s) for s in samples]
    for i, spec in enumerate(real):
        spec.meta.update(survey="sdss", id=f"real{i}", object_id=f"real{i}")
    build_corpus(real, tmp_path / "real")
    files = sorted(str(p) for p in tmp_path.glob("*/*.h5"))
    data = SpectraDataModule(files, batch_size=4, num_workers=0, val_fraction=0.3, seed=0,
                             engine_fraction=0.5)
    data.setup("fit")
    assert set(data.val_dataset.surveys) == {"sdss"}
    assert len(data.train_dataset) + len(data.val_dataset) == 80
    draws = [index for batch in data.train_sampler() for _epoch, index in batch]
    drawn = np.asarray(data.train_dataset.surveys)[draws]
    assert 0.3 < np.mean(drawn == "engine_sdss") < 0.7


def test_initialize_from_copies_weights_and_refuses_another_architecture(tmp_path):
    import torch

    from omnispectra.model import OmniSpectra, OmniSpectraConfig
    from omnispectra.pretrained import save_weights
    from omnispectra.training.train import initialize_from

    torch.manual_seed(0)
    source = OmniSpectra(OmniSpectraConfig.from_preset("tiny", n_layers=1))
    save_weights(source, tmp_path / "w.safetensors")
    target = OmniSpectra(OmniSpectraConfig.from_preset("tiny", n_layers=1))
    assert not torch.equal(next(target.parameters()), next(source.parameters()))
    initialize_from(target, tmp_path / "w.safetensors")
    for a, b in zip(target.state_dict().values(), source.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    other = OmniSpectra(OmniSpectraConfig.from_preset("tiny", n_layers=2))
    with pytest.raises(ConfigError, match="n_layers"):
        initialize_from(other, tmp_path / "w.safetensors")


def test_engine_fraction_without_engine_spectra_fails_at_setup(tmp_path):
    from omnispectra.corpus import build_corpus
    from omnispectra.engine.generator import EngineSample
    from omnispectra.engine.stream import engine_spectrum
    from omnispectra.training import SpectraDataModule

    rng = np.random.default_rng(0)
    wave = np.linspace(4000, 8000, 400)
    real = []
    for i in range(10):
        spec = engine_spectrum(EngineSample(wave, rng.normal(5, 1, wave.size), np.full(wave.size, 4.0),
                                            np.zeros(wave.size, bool), {"class": "STAR"}, {"survey": "sdss"}))
        spec.meta.update(survey="sdss", id=f"real{i}", object_id=f"real{i}")
        real.append(spec)
    build_corpus(real, tmp_path / "real")
    data = SpectraDataModule(sorted(str(p) for p in tmp_path.glob("*/*.h5")), batch_size=4, num_workers=0,
                             val_fraction=0.3, seed=0, engine_fraction=0.5)
    with pytest.raises(ValueError, match="needs engine and real"):
        data.setup("fit")
