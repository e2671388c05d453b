"""SpectrumDataset, survey-weighted bucketing, the object-grouped split and the DataModule."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from specutils import Spectrum
from torch.utils.data import DataLoader

from omnispectra import CorpusError
from omnispectra.collate import Collator, LengthBucketSampler, padding_fraction
from omnispectra.corpus import build_corpus
from omnispectra.dataset import SpectrumDataset, WeightedLengthBucketSampler, split_by_object, token_counts
from omnispectra.tokenizer import n_patches

from .test_corpus import make_spectrum


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """Three tiny per-survey corpora (60 spectra) plus two untokenizable spectra."""
    rng = np.random.default_rng(1)
    sizes = {"sdss": (200, 460), "miles": (420, 440), "apogee": (800, 860)}
    spectra = []
    for survey, (lo, hi) in sizes.items():
        for k in range(20):
            labels = {"z": 0.01 * k} if k % 3 else {"teff": 4000.0 + k, "class": "STAR" if k % 2 else "QSO"}
            spectra.append(make_spectrum(k, survey, int(rng.integers(lo, hi)), rng, **labels))
    short = make_spectrum(99, "sdss", 15, rng)  # fewer pixels than one patch
    masked = make_spectrum(98, "sdss", 100, rng)
    masked = Spectrum(spectral_axis=masked.spectral_axis, flux=masked.flux, uncertainty=masked.uncertainty,
                      mask=np.arange(100) >= 10, meta=masked.meta)  # 10 valid pixels < 20
    spectra += [short, masked]
    out = tmp_path_factory.mktemp("corpora")
    build_corpus(spectra, out / "c.h5", progress=False)
    return out


def test_items_tokenize_and_lengths_match(corpus_dir):
    ds = SpectrumDataset(corpus_dir, labels=["z", "teff", "class"])
    assert len(ds) == 60 and ds.n_dropped == 2  # the two untokenizable spectra are filtered
    assert ds.survey_names == ["apogee", "miles", "sdss"]
    for i in range(0, 60, 7):
        key, sample = ds[i]
        assert key == i
        assert sample.tokens.n_tokens == ds.token_lengths[i] == n_patches(int(ds.pixel_lengths[i]))
        assert sample.tokens.tokens.shape == (ds.token_lengths[i], 22)
        assert sample.id == sample.tokens.meta["id"] and sample.id.startswith(ds.surveys[i])
        assert set(sample.labels) == {"z", "teff", "class"}
    assert ds.label_categories["class"] == ["QSO", "STAR"]
    labels = np.array([[ds[i][1].labels[c] for c in ("z", "teff", "class")] for i in range(len(ds))])
    assert np.isnan(labels[:, 0]).sum() == np.isfinite(labels[:, 1]).sum() == 21
    assert set(labels[np.isfinite(labels[:, 2]), 2]) == {0.0, 1.0}
    # (epoch, index) keys from LengthBucketSampler(with_epoch=True) come back with the sample
    key, _ = ds[(3, 5)]
    assert key == (3, 5)
    assert not SpectrumDataset(corpus_dir, return_index=False)[0].chunk_mask
    np.testing.assert_array_equal(token_counts([19, 20, 21, 30, 31, 4563]),
                                  [0, 1, 2, 2, 3, n_patches(4563)])
    with pytest.raises(IndexError):
        ds[60]


def test_indices_and_subset(corpus_dir):
    full = SpectrumDataset(corpus_dir)
    # files are c-apogee, c-miles, c-sdss: rows 60 and 61 are the untokenizable sdss spectra
    part = SpectrumDataset(corpus_dir, indices=[0, 5, 41, 60, 61])
    assert part.rows.tolist() == [0, 5, 41] and part.n_dropped == 2
    assert part[2][1].id == full[41][1].id
    sub = full.subset([2, 4])
    assert len(sub) == 2 and sub[1][1].id == full[4][1].id
    with pytest.raises(CorpusError):
        SpectrumDataset(corpus_dir / "nothing-here")


def _batches(loader):
    return [(b.ids, b.tokens, b.loss_mask) for b in loader]


def test_dataloader_workers_match_single_process(corpus_dir):
    ds = SpectrumDataset(corpus_dir)
    results = []
    for workers in (0, 2):
        sampler = LengthBucketSampler(ds.token_lengths, batch_size=8, seed=3, with_epoch=True)
        sampler.set_epoch(1)
        loader = DataLoader(ds, batch_sampler=sampler, collate_fn=Collator(seed=7), num_workers=workers,
                            multiprocessing_context="fork" if workers else None)
        results.append(_batches(loader))
    assert len(results[0]) == len(results[1]) == 8
    for (ids_a, tok_a, mask_a), (ids_b, tok_b, mask_b) in zip(*results, strict=True):
        assert ids_a == ids_b
        assert torch.equal(tok_a, tok_b) and torch.equal(mask_a, mask_b)
    assert sum(m.sum() for _, _, m in results[0]) > 0


def test_split_deterministic_grouped_stratified():
    rng = np.random.default_rng(0)
    objects, surveys = [], []
    for survey, n_obj in (("sdss", 300), ("miles", 40), ("apogee", 2), ("single", 1)):
        for k in range(n_obj):
            for _ in range(int(rng.integers(1, 4))):  # repeat epochs / spaxels of one object
                objects.append(f"{survey}-{k}")
                surveys.append(survey)
    objects.append("")  # missing object id: its own group
    surveys.append("sdss")
    objects, surveys = np.array(objects), np.array(surveys)
    train, val = split_by_object(objects, surveys, fraction=0.1, seed=42)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(objects)))
    assert not set(objects[train]) & set(objects[val])  # grouped: no object on both sides
    val_objects = {s: len(set(objects[val][surveys[val] == s]))
                   for s in ("sdss", "miles", "apogee", "single")}
    # a hash threshold: about 10% of each survey; tiny surveys keep both sides non-empty
    assert 15 <= val_objects["sdss"] <= 45 and 1 <= val_objects["miles"] <= 10
    assert val_objects["apogee"] == 1 and val_objects["single"] == 0
    # deterministic and independent of row order
    again = split_by_object(objects, surveys, fraction=0.1, seed=42)
    assert np.array_equal(again[1], val)
    perm = rng.permutation(len(objects))
    _, val_perm = split_by_object(objects[perm], surveys[perm], fraction=0.1, seed=42)
    assert set(objects[perm][val_perm]) - {""} == set(objects[val]) - {""}  # empty ids: keyed by row
    # another seed picks other objects; fraction 0 keeps everything for training
    assert set(objects[split_by_object(objects, surveys, 0.1, seed=1)[1]]) != set(objects[val])
    assert split_by_object(objects, surveys, 0.0)[1].size == 0
    # a pinned value: the hash is stable across machines and Python versions
    pinned = split_by_object([f"obj{k}" for k in range(50)], None, 0.1, seed=42)[1]
    assert pinned.tolist() == [2, 13, 25, 30, 38]
    with pytest.raises(ValueError):
        split_by_object(objects, surveys, fraction=1.0)


def test_weighted_sampler_mixes_surveys():
    groups = np.array(["a"] * 100 + ["b"] * 20 + ["c"] * 30)
    lengths = np.arange(150) % 37 + 5
    plain = WeightedLengthBucketSampler(lengths, groups, {}, batch_size=10)
    drawn = plain.epoch_indices()
    assert sorted(drawn.tolist()) == list(range(150))  # weight 1 everywhere: a permutation
    sampler = WeightedLengthBucketSampler(lengths, groups, {"b": 5.0, "c": 0.0}, batch_size=10, seed=1)
    assert sampler.counts == {"a": 75, "b": 75, "c": 0}  # 100*1 : 20*5 : 0
    picked = groups[np.concatenate(list(sampler))]
    assert (picked == "b").sum() == 75 and (picked == "c").sum() == 0
    first = list(sampler)
    assert first == list(sampler)  # deterministic
    sampler.set_epoch(1)
    assert first != list(sampler)
    batches = list(sampler)
    assert all(max(lengths[b]) - min(lengths[b]) <= 36 for b in batches)
    # bucketing cuts padding compared with random batches
    rand = np.random.default_rng(0).permutation(sampler.epoch_indices())
    random_batches = [rand[i:i + 10] for i in range(0, 150, 10)]
    assert padding_fraction(lengths, batches) < padding_fraction(lengths, random_batches)
    # rank-aware: two ranks see disjoint halves of the same batch list
    ranks = [WeightedLengthBucketSampler(lengths, groups, {"b": 5.0}, 10, num_replicas=2, rank=r)
             for r in (0, 1)]
    assert len(list(ranks[0])) == len(list(ranks[1])) == len(ranks[0])
    keyed = WeightedLengthBucketSampler(lengths, groups, {}, 10, with_epoch=True)
    keyed.set_epoch(4)
    keyed.skip_next(2)
    keys = list(keyed)
    assert len(keys) == len(keyed) - 2 and keys[0][0][0] == 4
    with pytest.raises(ValueError, match="unknown survey"):
        WeightedLengthBucketSampler(lengths, groups, {"zz": 1.0}, 10)


def test_mmu_file_read_directly(tmp_path):
    pytest.importorskip("omnispectra.io.mmu")
    rng = np.random.default_rng(2)
    n, length = 4, 300
    lam = np.tile(np.linspace(3600, 9000, length), (n, 1))
    flux = rng.normal(1, 0.1, (n, length)).astype(np.float32)
    ivar = np.ones((n, length), np.float32)
    lam[1, 250:] = 0  # padding of a shorter row
    flux[1, 250:] = ivar[1, 250:] = 0
    path = tmp_path / "sdss" / "mmu.hdf5"
    path.parent.mkdir()
    with h5py.File(path, "w") as f:
        f["spectrum_lambda"], f["spectrum_flux"], f["spectrum_ivar"] = lam, flux, ivar
        f["object_id"] = np.array([b"o1", b"o2", b"o3", b"o4"])
        f["z"] = np.array([0.1, 0.2, 0.3, 0.4])
    ds = SpectrumDataset(path, labels=["z"])
    assert len(ds) == 4 and ds.pixel_lengths.tolist() == [300, 250, 300, 300]
    _, sample = ds[1]
    assert sample.tokens.n_tokens == n_patches(250) and sample.labels["z"] == pytest.approx(0.2)


def test_core_does_not_import_lightning():
    code = ("import sys, omnispectra.corpus, omnispectra.dataset, omnispectra.collate, omnispectra.cli; "
            "assert 'lightning' not in sys.modules and 'lightning.pytorch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_datamodule(corpus_dir):
    pytest.importorskip("lightning")
    from omnispectra.training import SpectraDataModule

    dm = SpectraDataModule(corpus_dir, batch_size=8, num_workers=0, val_fraction=0.2, seed=42, pool_size=32)
    dm.setup("fit")
    train_objects = set(dm.train_dataset.object_ids)
    val_objects = set(dm.val_dataset.object_ids)
    assert not train_objects & val_objects and len(dm.train_dataset) + len(dm.val_dataset) == 60
    assert set(dm.val_dataset.surveys) == {"sdss", "miles", "apogee"}
    assert dm.describe()["n_dropped"] == 2
    batches = list(dm.train_dataloader())
    assert sum(len(b) for b in batches) == len(dm.train_dataset)
    assert all(b.loss_mask.any() for b in batches)
    assert [b.ids for b in dm.train_dataloader()] == [b.ids for b in batches]  # same epoch, same order
    dm.set_epoch(1)  # without a trainer the module's own epoch is used
    assert [b.ids for b in dm.train_dataloader()] != [b.ids for b in batches]
    val_a = [b.loss_mask for b in dm.val_dataloader()]
    val_b = [b.loss_mask for b in dm.val_dataloader()]
    # fixed val masks
    assert len(val_a) > 0 and all(torch.equal(a, b) for a, b in zip(val_a, val_b, strict=True))
    weighted = SpectraDataModule(corpus_dir, batch_size=8, num_workers=0, val_fraction=0.2,
                                 survey_weights={"apogee": 0.0})
    weighted.setup()
    assert all(not i.startswith("apogee") for b in weighted.train_dataloader() for i in b.ids)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's hints (few workers, no val step, ...)
def test_datamodule_epochs_reach_the_masks_under_a_trainer(corpus_dir):
    L = pytest.importorskip("lightning")
    from omnispectra.training import SpectraDataModule

    seen: dict[int, dict[str, bytes]] = {}

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, i):
            for k, sid in enumerate(batch.ids):
                seen.setdefault(self.current_epoch, {})[sid] = batch.loss_mask[k].numpy().tobytes()
            return (self.w ** 2).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = SpectraDataModule(corpus_dir, batch_size=16, num_workers=0, val_fraction=0.0)
    trainer = L.Trainer(max_epochs=2, use_distributed_sampler=False, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(Probe(), datamodule=dm)
    assert set(seen) == {0, 1} and len(seen[0]) == len(seen[1]) == 60
    assert sum(seen[0][sid] != seen[1][sid] for sid in seen[0]) > 30  # new masks in epoch 1


def test_wavelength_ranges_use_valid_pixels_per_survey(tmp_path):
    """The support stored with models and probes: masked and ivar-0 pixels do not count."""
    from astropy import units as u
    from astropy.nddata import InverseVariance
    from specutils import Spectrum

    from omnispectra.corpus import build_corpus
    from omnispectra.dataset import SpectrumDataset

    def spectrum(i, survey, lo, hi):
        wave = np.linspace(lo, hi, 300)
        ivar = np.ones(300)
        ivar[:10] = 0.0                       # invalid blue end
        mask = np.zeros(300, bool)
        mask[-20:] = True                     # masked red end
        return Spectrum(spectral_axis=wave * u.AA, flux=np.ones(300) * u.dimensionless_unscaled,
                        uncertainty=InverseVariance(ivar), mask=mask,
                        meta={"id": f"{survey}{i}", "object_id": f"{survey}{i}", "survey": survey})

    spectra = [spectrum(0, "a", 4000, 5000), spectrum(1, "a", 4500, 6000), spectrum(2, "b", 7000, 8000)]
    build_corpus(spectra, tmp_path)
    ds = SpectrumDataset(sorted(str(p) for p in tmp_path.glob("*.h5")))
    out = ds.wavelength_ranges()
    step_a0, step_a1 = 1000 / 299, 1500 / 299
    assert out["surveys"]["a"]["min"] == pytest.approx(4000 + 10 * step_a0, abs=0.01)
    assert out["surveys"]["a"]["max"] == pytest.approx(6000 - 20 * step_a1, abs=0.01)
    assert out["surveys"]["a"]["spectra"] == 2 and out["surveys"]["b"]["spectra"] == 1
    assert out["overall"][1] == out["surveys"]["b"]["max"]
    only_b = ds.wavelength_ranges([int(np.flatnonzero(ds.surveys == "b")[0])])
    assert list(only_b["surveys"]) == ["b"]
