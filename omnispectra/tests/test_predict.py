"""Corpus-scale embedding through Lightning's predict loop: shards, kills and resumption."""

import numpy as np
import pytest
import torch

from omnispectra import ConfigError, OutputExistsError
from omnispectra.corpus import build_corpus
from omnispectra.model import OmniSpectra, OmniSpectraConfig

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning:lightning.*", "ignore::DeprecationWarning:lightning.*",
    "ignore:.*LeafSpec.*:DeprecationWarning",
)
predict = pytest.importorskip("omnispectra.training.predict")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from astropy import units as u
    from specutils import Spectrum

    rng = np.random.default_rng(1)
    spectra = []
    for k in range(23):
        n = int(rng.integers(60, 400))
        wave = np.geomspace(3800, 9000, n)
        flux = 1 + 0.2 * np.sin(wave / rng.uniform(20, 90)) + rng.normal(0, 0.02, n)
        spectra.append(Spectrum(spectral_axis=wave * u.AA, flux=flux * u.dimensionless_unscaled,
                                meta={"id": f"obj {k}\nline two" if k == 3 else f"obj-{k}",
                                      "survey": "synth_a" if k % 3 else "synth_b"}))
    out = tmp_path_factory.mktemp("corpus")
    report = build_corpus(spectra, out, progress=False)
    return sorted(report.outputs.values())


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return OmniSpectra(OmniSpectraConfig.from_preset("tiny", dim=32, n_layers=1, n_heads=2)).eval()


class _Killed(Exception):
    pass


def _kill_after(n_shards, folder):
    import lightning as L

    class KillAfter(L.Callback):
        def on_predict_batch_end(self, *args, **kwargs):
            if len(list(folder.glob("shard-*.h5"))) >= n_shards:
                raise _Killed(f"simulated kill after {n_shards} shards")

    return KillAfter()


def _run(corpus, model, folder, **kw):
    return predict.embed_corpus(corpus, folder, model=model, shard_size=5, batch_size=3,
                                accelerator="cpu", devices=1, **kw)


def test_shards_resume_after_kill_equal_one_shot(corpus, model, tmp_path):
    from omnispectra.api import embed
    from omnispectra.dataset import SpectrumDataset

    one = _run(corpus, model, tmp_path / "one")
    assert one["n_spectra"] == 23 and one["n_shards"] == 5 and one["written"] == 5
    straight = predict.read_embedding_shards(tmp_path / "one")
    assert len(straight) == 23 and straight["embedding"].shape == (23, 32)
    assert straight.meta["KIND"] == "embeddings" and straight.meta["DTYPE"] == "float32"
    assert "obj 3\nline two" in list(straight["id"])
    # the shards hold the same vectors as the everyday embed on the same spectra
    ds = SpectrumDataset(corpus)
    tokens = [ds[i][1].tokens for i in range(3)]
    np.testing.assert_allclose(straight["embedding"][:3], embed(tokens, model=model, dtype="float32"),
                               rtol=1e-5, atol=1e-5)

    folder = tmp_path / "killed"
    with pytest.raises(_Killed):
        _run(corpus, model, folder, callbacks=[_kill_after(2, folder)])
    assert sorted(p.name for p in folder.glob("shard-*.h5")) == ["shard-00000.h5", "shard-00001.h5"]
    with pytest.raises(ConfigError, match="incomplete"):
        predict.read_embedding_shards(folder)
    with pytest.raises(OutputExistsError, match="resume"):
        _run(corpus, model, folder)
    resumed = _run(corpus, model, folder, resume=True)
    assert resumed["skipped"] == 2 and resumed["written"] == 3
    # a lost last shard is redone on the next resume
    (folder / "shard-00004.h5").unlink()
    assert _run(corpus, model, folder, resume=True)["written"] == 1
    again = predict.read_embedding_shards(folder)
    assert list(again["id"]) == list(straight["id"]) and list(again["row"]) == list(straight["row"])
    np.testing.assert_array_equal(again["embedding"], straight["embedding"])
    assert not list(folder.glob(".*"))  # no temporary files left behind


def test_resume_with_other_settings_is_refused(corpus, model, tmp_path):
    folder = tmp_path / "run"
    _run(corpus, model, folder)
    with pytest.raises(ConfigError, match="shard_size"):
        predict.embed_corpus(corpus, folder, model=model, shard_size=7, accelerator="cpu", devices=1,
                             resume=True)
    fresh = _run(corpus, model, folder, overwrite=True)
    assert fresh["written"] == 5 and fresh["skipped"] == 0


def test_cli_embed_corpus_and_resume(corpus, model, tmp_path):
    from click.testing import CliRunner

    from omnispectra.cli import main
    from omnispectra.pretrained import save_weights

    weights = save_weights(model, tmp_path / "m.safetensors") and tmp_path / "m.safetensors"
    folder = tmp_path / "emb"
    args = ["embed-corpus", *corpus, "-o", str(folder), "--model", str(weights), "--shard-size", "10",
            "--batch-size", "4", "--accelerator", "cpu", "--devices", "1", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "embedded 23 spectra" in result.output
    again = CliRunner().invoke(main, args)  # a used folder needs --resume or --overwrite
    assert again.exit_code == 1 and "Traceback" not in again.output
    resumed = CliRunner().invoke(main, args + ["--resume"])
    assert resumed.exit_code == 0 and "kept from the previous run" in resumed.output, resumed.output
