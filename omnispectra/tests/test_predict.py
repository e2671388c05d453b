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


def _edit_manifest(folder, edit):
    import json

    path = folder / predict.MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_resume_checks_every_shard_it_keeps(corpus, model, tmp_path, caplog):
    import json
    import shutil

    from omnispectra.pretrained import sha256sum

    folder = tmp_path / "run"
    _run(corpus, model, folder)
    straight = predict.read_embedding_shards(folder)
    shards = json.loads((folder / predict.MANIFEST).read_text())["shards"]
    assert sorted(shards) == list("01234") and [shards[k]["n"] for k in "01234"] == [5, 5, 5, 5, 3]
    assert shards["1"]["sha256"] == sha256sum(folder / "shard-00001.h5")

    # a shard damaged on disk: reading refuses it, resuming embeds it again
    damaged = folder / "shard-00001.h5"
    data = bytearray(damaged.read_bytes())
    data[-64] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"shard-00001\.h5 cannot be trusted: its sha256"):
        predict.read_embedding_shards(folder)
    with caplog.at_level("WARNING", logger="omnispectra.training.predict"):
        again = _run(corpus, model, folder, resume=True)
    assert again["written"] == 1 and again["skipped"] == 4
    assert "shard-00001.h5 is embedded again: its sha256" in caplog.text

    # a checksum changed in the manifest: that shard is redone
    _edit_manifest(folder, lambda m: m["shards"]["2"].update(sha256="0" * 64))
    assert _run(corpus, model, folder, resume=True)["written"] == 1

    # another shard's rows under a consistent checksum: the rows and ids give it away
    shutil.copy(folder / "shard-00000.h5", folder / "shard-00003.h5")
    _edit_manifest(folder, lambda m: m["shards"]["3"].update(sha256=sha256sum(folder / "shard-00003.h5")))
    caplog.clear()
    with caplog.at_level("WARNING", logger="omnispectra.training.predict"):
        assert _run(corpus, model, folder, resume=True)["written"] == 1
    assert "shard-00003.h5 is embedded again: its row column" in caplog.text

    # the right rows under other ids (a consistent checksum again)
    from astropy.table import Table

    renamed = Table.read(folder / "shard-00003.h5")
    renamed["id"] = [f"x{i}" for i in range(len(renamed))]
    renamed.write(folder / "shard-00003.h5", overwrite=True, serialize_meta=True, path="data")
    _edit_manifest(folder, lambda m: m["shards"]["3"].update(sha256=sha256sum(folder / "shard-00003.h5")))
    caplog.clear()
    with caplog.at_level("WARNING", logger="omnispectra.training.predict"):
        assert _run(corpus, model, folder, resume=True)["written"] == 1
    assert "shard-00003.h5 is embedded again: its ids are not those" in caplog.text

    # a shard numbered beyond the run: refused by resume and by read, never stacked in
    shutil.copy(folder / "shard-00000.h5", folder / "shard-00005.h5")
    with pytest.raises(ConfigError, match=r"shard-00005\.h5 lie beyond its 5 shards"):
        _run(corpus, model, folder, resume=True)
    with pytest.raises(ConfigError, match=r"shard-00005\.h5 beyond its 5 shards"):
        predict.read_embedding_shards(folder)
    (folder / "shard-00005.h5").unlink()

    final = predict.read_embedding_shards(folder)
    assert list(final["id"]) == list(straight["id"]) and list(final["row"]) == list(straight["row"])
    np.testing.assert_array_equal(final["embedding"], straight["embedding"])
