"""Auxiliary pretraining objectives (omnispectra.training.auxiliary): the loss falls on a tiny
model, the option off leaves the training step exactly the paper's, pairs share a batch."""

import csv

import numpy as np
import pytest
import torch

from omnispectra.collate import Collator, LengthBucketSampler, Sample
from omnispectra.corpus import build_corpus
from omnispectra.engine import generator, stream
from omnispectra.engine.donors import Donor
from omnispectra.exceptions import ConfigError
from omnispectra.model import OmniSpectra, OmniSpectraConfig, masked_reconstruction_loss
from omnispectra.templates.library import TemplateBasis, TemplateLibrary
from omnispectra.tokenizer import tokenize
from omnispectra.training.auxiliary import (
    AuxiliaryCollator,
    AuxiliaryConfig,
    PairedBatchSampler,
    invariance_loss,
    partner_index,
)
from omnispectra.training.module import OmniSpectraModule
from omnispectra.training.train import TrainConfig, train

MICRO = {"dim": 32, "n_layers": 1, "n_heads": 2}

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning:lightning.*", "ignore::DeprecationWarning:lightning.*",
    "ignore:.*LeafSpec.*:DeprecationWarning",
)


def _views(n_objects=6, seed=0):
    """Two noisy views (different grids) of each of ``n_objects`` spectra of three kinds."""
    rng = np.random.default_rng(seed)
    samples, objects, classes = [], [], []
    for k in range(n_objects):
        cls = k % 3
        for view in range(2):
            wave = np.geomspace(3800 + 100 * view, 9000 - 200 * view, 600 + 50 * view)
            flux = (1 + [0.0, 0.5, -0.5][cls] * (wave / 6000 - 1) + [0, 3, 0][cls]
                    * np.exp(-0.5 * ((wave - 6563) / 20) ** 2) + rng.normal(0, 0.05, wave.size))
            samples.append(Sample(tokenize(wave, flux, np.full(wave.size, 400.0), patch_size=20, stride=10),
                                  labels={"class": float(cls), "z": 0.1 * k, "teff": np.nan, "logg": np.nan,
                                          "fe_h": np.nan, "survey": 1.0, "object_id": float(k)}))
            objects.append(k)
            classes.append(cls)
    return samples


CATEGORIES = {"class": ["GALAXY", "QSO", "STAR"], "survey": ["boss", "engine_sdss"]}


def test_auxiliary_loss_falls_on_a_tiny_model():
    collator = AuxiliaryCollator(Collator(seed=0), CATEGORIES)
    batch = collator(list(enumerate(_views())))
    assert batch.labels["aux_engine"].tolist() == [1.0] * 12
    assert batch.labels["aux_object"][:4].tolist() == [0.0, 0.0, 1.0, 1.0]
    torch.manual_seed(0)
    module = OmniSpectraModule(OmniSpectraConfig.from_preset("tiny", **MICRO).to_dict(),
                               auxiliary={"class_weight": 1.0, "z_weight": 1.0, "invariance_weight": 1.0})
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    history = []
    for _ in range(15):
        terms = module.auxiliary_step(batch)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in terms.items()})
    first, last = history[0], history[-1]
    assert last["aux_class"] < 0.5 * first["aux_class"]
    assert last["aux_invariance"] < first["aux_invariance"]
    assert last["aux_loss"] < 0.6 * first["aux_loss"] and first["aux_stellar"] == 0.0
    # real spectra (not engine) get no auxiliary term
    real = AuxiliaryCollator(Collator(seed=0), {**CATEGORIES, "survey": ["boss", "boss"]})(
        list(enumerate(_views())))
    assert float(module.auxiliary_step(real)["aux_loss"].detach()) == 0.0


def test_option_off_is_the_papers_step_bit_for_bit(monkeypatch):
    config = OmniSpectraConfig.from_preset("tiny", **MICRO)
    batch = Collator(seed=0)(list(enumerate(_views(3))))
    torch.manual_seed(0)
    plain = OmniSpectra(config)
    torch.manual_seed(0)
    off = OmniSpectraModule(config.to_dict())
    torch.manual_seed(0)
    on = OmniSpectraModule(config.to_dict(), auxiliary={})
    assert off.aux_heads is None and set(off.state_dict()) == {f"model.{k}" for k in plain.state_dict()}
    for k, v in plain.state_dict().items():  # the heads do not shift the encoder's initialization
        assert torch.equal(off.state_dict()[f"model.{k}"], v)
        assert torch.equal(on.state_dict()[f"model.{k}"], v)
    monkeypatch.setattr(off, "log", lambda *a, **k: None)
    loss = off._common_step(batch, "train")
    reference = masked_reconstruction_loss(plain(batch.tokens, batch.wavelength, batch.valid), batch.target,
                                           batch.loss_mask, batch.pixel_valid, huber_delta=1.0)
    assert torch.equal(loss, reference)
    loss.backward()
    reference.backward()
    for name, p in plain.named_parameters():
        assert torch.equal(dict(off.model.named_parameters())[name].grad, p.grad)


def test_invariance_loss_and_partners():
    pooled = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    good = invariance_loss(pooled, torch.tensor([0.0, 0.0, 1.0, 1.0]))
    bad = invariance_loss(pooled, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert good < bad
    assert float(invariance_loss(pooled, torch.tensor([0.0, 1.0, 2.0, np.nan]))) == 0.0
    surveys = ["engine_sdss", "engine_boss", "sdss", "sdss", "engine_sdss"]
    partner = partner_index(["a", "a", "b", "b", "c"], surveys)
    assert partner.tolist() == [1, 0, -1, -1, -1]
    inner = LengthBucketSampler([5, 50, 6, 7, 8], batch_size=2, shuffle=True, seed=0, with_epoch=True)
    batches = list(PairedBatchSampler(inner, partner))
    flat = [i for b in batches for _, i in b]
    assert sorted(set(flat)) == [0, 1, 2, 3, 4]
    assert all({0, 1} <= {i for _, i in b} for b in batches if {0, 1} & {i for _, i in b})
    with pytest.raises(ConfigError, match="unknown auxiliary"):
        AuxiliaryConfig.from_dict({"clas_weight": 1.0})
    with pytest.raises(ConfigError, match="auxiliary"):
        TrainConfig.from_preset("tiny", auxiliary={"temperature": 0})


def _engine():
    def template(name, spectype, subtype, lo, hi, sigma=0.0):
        loglam0 = np.log10(lo)
        wave = 10 ** (loglam0 + 2e-5 * np.arange(int((np.log10(hi) - loglam0) / 2e-5)))
        basis = np.stack([(wave / 5000.0) ** -1.0 + 3 * np.exp(-0.5 * ((wave - 4000.0) / 8.0) ** 2),
                          (wave / 5000.0) ** 0.5])
        return TemplateBasis(name=name, spectype=spectype, subtype=subtype, loglam0=loglam0, dloglam=2e-5,
                             basis=basis, archetypes=np.array([[1.0, 0.2]]), sigma_kms=sigma)

    library = TemplateLibrary([template("g", "GALAXY", "", 1200, 10000),
                               template("s", "STAR", "K", 3000, 11000),
                               template("q", "QSO", "LOZ", 1330, 9600, 60.0)])
    donors = []
    for i in range(3):
        wave = 10 ** np.arange(np.log10(3800 + 50 * i), np.log10(9200), 1e-4)
        donors.append(Donor(survey="sdss", id=f"d{i}", object_id=f"obj{i}", wave=wave,
                            flux=np.full(wave.size, 5.0), ivar=np.full(wave.size, 4.0),
                            mask=np.zeros(wave.size, bool), sigma_kms=np.full(wave.size, 69.0), sky=None,
                            labels={}))
    return generator.Engine(library, donors)


@pytest.mark.slow
def test_train_with_auxiliary_objectives(tmp_path):
    from omnispectra.examples import example_paths

    corpus = tmp_path / "corpus"
    stream.write_engine_corpus(_engine(), 12, corpus / "engine.h5", seed=0, pairs=True)
    build_corpus([str(p) for p in example_paths()], corpus / "real", progress=False)
    config = TrainConfig.from_preset(
        "tiny", corpus=sorted(str(p) for p in corpus.rglob("*.h5")), output=str(tmp_path / "run"),
        model=MICRO,
        batch_size=4, max_steps=3, checkpoint_every=3, val_every=3, val_fraction=0.2, progress=False,
        auxiliary={"class_weight": 0.5, "invariance_weight": 0.5})
    result = train(config)
    assert result["steps"] == 3
    with open(result["metrics_csv"]) as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("train_aux_invariance")]
    assert len(rows) == 3 and all(np.isfinite(float(r["train_aux_loss"])) for r in rows)
    assert any(float(r["train_aux_invariance"]) > 0 for r in rows)  # a batch held both views of an object


def test_engine_stream_renders_new_objects_each_epoch_reproducibly():
    """Slot s of epoch e is a function of (seed, e, s): the same in a fresh stream, new in the
    next epoch; a pair's two slots are one object (class, z) seen through two donors."""
    from omnispectra.training.stream import EngineStream

    engine = _engine()
    a, b = EngineStream(engine, 5, seed=3, pairs=True), EngineStream(engine, 5, seed=3, pairs=True)
    assert len(a) == 10 and a.object_ids[0] == a.object_ids[1] != a.object_ids[2]
    first, paired = a.sample(0, 0)
    again, _ = b.sample(0, 0)
    np.testing.assert_array_equal(first.flux, again.flux)
    assert not np.array_equal(first.flux, a.sample(1, 0)[0].flux)
    second, _ = a.sample(0, 1)
    if paired and second.meta["donor_id"] != first.meta["donor_id"]:  # a pair: one object, two donors
        assert second.labels["class"] == first.labels["class"] and second.labels["z"] == first.labels["z"]
    # the first view keeps its object's donor, so its length is known before it is made
    assert len(first.wave) == a.pixel_lengths[0] == len(a.sample(4, 0)[0].wave)
    assert a.rendered >= 3 and a.seconds > 0
    single = EngineStream(engine, 4, seed=3)
    assert len(single) == 4 and len(set(single.object_ids)) == 4


def test_datamodule_mixes_streamed_engine_pairs_into_batches(tmp_path):
    """With a stream, training batches hold engine rows (aux targets from the rendered labels,
    both views of a pair), real rows keep their label codes, and validation stays real."""
    from omnispectra.examples import example_paths
    from omnispectra.training.datamodule import SpectraDataModule
    from omnispectra.training.stream import EngineStream

    build_corpus([str(p) for p in example_paths()], tmp_path / "real", progress=False)
    stream_ = EngineStream(_engine(), 6, seed=1, pairs=True)
    data = SpectraDataModule(str(tmp_path / "real"), batch_size=4, num_workers=0, val_fraction=0.2, seed=0,
                             auxiliary=True, pairs=True, engine_fraction=0.5, engine_stream=stream_)
    data.setup("fit")
    mix = data.train_dataset
    n_real = mix.n_real
    assert len(mix) == n_real + 12 and all(s.startswith("engine_") for s in mix.surveys[n_real:])
    assert not any(str(s).startswith("engine") for s in data.val_dataset.surveys)
    classes = mix.real.column("class").astype(str)
    k = int(np.flatnonzero(classes != "")[0])
    _, real_item = mix[(0, k)]  # a real item's code names its own class in the mix's categories
    assert mix.label_categories["class"][int(real_item.labels["class"])] == classes[k]
    batches = list(data.train_dataloader())
    engine_rows = paired_rows = 0
    for batch in batches:
        engine = batch.labels["aux_engine"].numpy() > 0
        objects = batch.labels["aux_object"].numpy()
        classes = batch.labels["aux_class"].numpy()
        engine_rows += int(engine.sum())
        assert np.all(np.isfinite(classes[engine]))  # every engine row carries its class
        for obj in objects[np.isfinite(objects)]:
            assert (objects == obj).sum() == 2  # both views of a pair in the same batch
            paired_rows += 1
    assert engine_rows > 0 and paired_rows > 0
    assert data.describe()["engine_stream"]["rendered"] >= engine_rows // 2


def test_engine_stream_settings_are_checked():
    base = TrainConfig.from_preset("tiny")
    for bad, message in [({"objects": 10}, "donors"), ({"donors": ["d"], "objects": 0}, "objects"),
                         ({"donors": ["d"], "pair": True}, "unknown engine_stream"),
                         ({"donors": ["d"], "seed": "1"}, "seed"), ("donors", "mapping"),
                         ({"donors": ["d"], "star_fraction": 0.3}, "star_fraction"),
                         ({"donors": ["d"], "stars": "data/"}, "star_fraction")]:
        with pytest.raises(ConfigError, match=message):
            base.replace(engine_stream=bad)
    assert base.replace(engine_stream={"donors": "spectra/", "objects": 5}).engine_stream["objects"] == 5


@pytest.mark.slow
def test_train_with_a_streamed_engine(tmp_path):
    """`omnispectra train` with ``engine_stream``: the engine is built from the bundled compact
    templates and the example files as donors, and the run reports what rendering cost."""
    from omnispectra.examples import example_paths
    from omnispectra.pretrained import bundled_templates_path

    build_corpus([str(p) for p in example_paths()], tmp_path / "real", progress=False)
    config = TrainConfig.from_preset(
        "tiny", corpus=[str(tmp_path / "real")], output=str(tmp_path / "run"), model=MICRO,
        batch_size=4, max_steps=3, checkpoint_every=3, val_every=3, val_fraction=0.2, progress=False,
        engine_fraction=0.5, auxiliary={"class_weight": 0.5, "invariance_weight": 0.5},
        engine_stream={"donors": [str(p) for p in example_paths()], "objects": 8,
                       "templates": str(bundled_templates_path())})
    result = train(config)
    assert result["steps"] == 3
    assert result["engine_stream"]["rendered"] > 0 and 0 < result["engine_stream"]["share_of_wall_time"] < 1
    with open(result["metrics_csv"]) as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("train_aux_class")]
    assert len(rows) == 3 and any(float(r["train_aux_class"]) > 0 for r in rows)


def _library_stars(n=4):
    from omnispectra.engine.labelled import LibraryStar

    wave = np.arange(3540.0, 7410.0, 0.9)
    return [LibraryStar(f"s{k:04d}", wave, 1 + 0.1 * k * (wave / 5000 - 1)
                        - 0.3 * np.exp(-0.5 * ((wave - 5175) / 3) ** 2), 2.5,
                        {"teff": 4000.0 + 500 * k, "logg": 4.5, "fe_h": -0.2 * k}) for k in range(n)]


def test_engine_stream_observes_library_stars_with_their_labels():
    """With library stars, the chosen objects are stars observed through the donors, carrying
    the star's Teff, logg and [Fe/H]; both views of a pair are the same star."""
    from omnispectra.training.stream import EngineStream, training_side_stars

    stars = _library_stars()
    s = EngineStream(_engine(), 6, seed=2, pairs=True, stars=stars, star_fraction=1.0)
    first, _ = s.sample(0, 0)
    second, _ = s.sample(0, 1)
    star = stars[int(s.star_of[0])]
    assert first.meta["template"] == second.meta["template"] == f"library:{star.id}"
    assert first.labels["fe_h"] == star.labels["fe_h"] and first.labels["class"] == "STAR"
    assert first.wave.min() >= 3540.0 and first.wave.max() <= 7410.0  # never beyond the library
    np.testing.assert_array_equal(first.flux, EngineStream(_engine(), 6, seed=2, pairs=True, stars=stars,
                                                           star_fraction=1.0).sample(0, 0)[0].flux)
    mixed = EngineStream(_engine(), 400, seed=2, stars=stars, star_fraction=0.25)
    assert 0.15 < (mixed.star_of >= 0).mean() < 0.35
    none = EngineStream(_engine(), 5, seed=2)
    assert (none.star_of < 0).all() and not none.sample(0, 0)[0].meta["template"].startswith("library:")
    with pytest.raises(ValueError, match="star_fraction"):
        EngineStream(_engine(), 5, star_fraction=0.5)
    from omnispectra.splits import is_validation

    kept = training_side_stars(stars * 30 + _library_stars(60), 0.2, 0)
    assert kept and not is_validation([k.id for k in kept], 0.2, 0).any()
    assert len({k.id for k in kept}) < 60  # some stars are held out


def test_miles_stars_read_the_library_index(tmp_path):
    from omnispectra.engine.labelled import miles_stars

    from .helpers import require_data_dir

    root = require_data_dir()
    rows = (root / "miles" / "index.csv").read_text().splitlines()
    (tmp_path / "miles").mkdir()
    (tmp_path / "miles" / "index.csv").write_text("\n".join(rows[:4]) + "\n")
    for line in rows[1:4]:
        name = line.split(",")[0]
        (tmp_path / name).symlink_to(root / name)
    stars = miles_stars(tmp_path)
    assert len(stars) == 3 and stars[0].id == rows[1].split(",")[1] and stars[0].fwhm == 2.5
    assert stars[0].labels["teff"] == float(rows[1].split(",")[3])
