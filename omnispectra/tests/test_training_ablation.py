"""The switches the Table 7 ablation needs: random-token masking, a split seed apart from
the run seed, and the real-only validation score of ``benchmarks/ablations.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnispectra.collate import Collator
from omnispectra.corpus import build_corpus
from omnispectra.masking import MASKING_SCHEMES, chunk_mask, draw_mask, mask_rng
from omnispectra.model import OmniSpectra, OmniSpectraConfig
from omnispectra.tokenizer import tokenize

from .helpers import REPO, load_script
from .test_corpus import make_spectrum

ABLATIONS = REPO / "benchmarks" / "ablations.py"


def _runs(mask):
    padded = np.r_[False, mask, False].astype(int)
    return int(np.count_nonzero(np.diff(padded) == 1))


@pytest.mark.parametrize("n_tok", [3, 55, 384, 2000], ids=["tiny", "vipers", "sdss", "long"])
def test_random_mask_hides_as_many_tokens_as_the_chunk_rule(n_tok):
    chunk = chunk_mask(n_tok, mask_rng(5, 0, 1))
    scattered = draw_mask(n_tok, mask_rng(5, 0, 1), scheme="random")
    assert scattered.shape == (n_tok,) and scattered.sum() == chunk.sum()
    np.testing.assert_array_equal(scattered, draw_mask(n_tok, mask_rng(5, 0, 1), scheme="random"))
    if n_tok >= 384:  # scattered: many more runs than the chunk rule's few chunks
        assert _runs(scattered) > 3 * _runs(chunk)


def test_draw_mask_dispatches_and_rejects_unknown_schemes():
    assert MASKING_SCHEMES == ("chunk", "random")
    np.testing.assert_array_equal(draw_mask(400, mask_rng(1, 2, 3)), chunk_mask(400, mask_rng(1, 2, 3)))
    with pytest.raises(ValueError, match="unknown masking scheme 'blocks'"):
        draw_mask(400, mask_rng(0, 0, 0), scheme="blocks")
    with pytest.raises(ValueError, match="mask ratio"):
        draw_mask(400, mask_rng(0, 0, 0), ratio=2.0, scheme="random")


def test_collator_random_masking_keeps_the_target_count():
    rng = np.random.default_rng(0)
    items = [(i, tokenize(np.linspace(4000, 9000, 3000), rng.normal(5, 1, 3000))) for i in range(3)]
    chunk = Collator(seed=3)(items)
    scattered = Collator(seed=3, masking="random")(items)
    assert torch.equal(chunk.loss_mask.sum(1), scattered.loss_mask.sum(1))
    assert not torch.equal(chunk.loss_mask, scattered.loss_mask)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two real-named surveys and one engine survey, 16 spectra each (8 objects)."""
    rng = np.random.default_rng(2)
    spectra = [make_spectrum(k, survey, int(rng.integers(600, 900)), rng)
               for survey in ("sdss", "miles", "engine_sdss") for k in range(16)]
    out = tmp_path_factory.mktemp("ablation-corpus")
    return sorted(str(p) for p in build_corpus(spectra, out, progress=False).outputs.values())


@pytest.mark.filterwarnings("ignore::DeprecationWarning:lightning.*",
                            "ignore:.*LeafSpec.*:DeprecationWarning")
def test_split_seed_fixes_the_split_whatever_the_run_seed(corpus):
    pytest.importorskip("lightning")
    from omnispectra.training import SpectraDataModule

    def val_ids(**kw):
        dm = SpectraDataModule(corpus, batch_size=4, num_workers=0, val_fraction=0.3, **kw)
        dm.setup("fit")
        return sorted(dm.val_dataset.column("id").tolist())

    assert val_ids(seed=42, split_seed=0) == val_ids(seed=43, split_seed=0) == val_ids(seed=0)
    assert val_ids(seed=42) == val_ids(seed=7, split_seed=42)
    assert any(val_ids(seed=s) != val_ids(seed=0) for s in (1, 2, 3))


def test_train_config_checks_the_new_switches():
    from omnispectra import ConfigError
    from omnispectra.training import TrainConfig

    config = TrainConfig.from_preset("tiny", masking="random", split_seed=0)
    assert config.masking == "random" and config.split_seed == 0
    with pytest.raises(ConfigError, match="masking='blocks'"):
        TrainConfig.from_preset("tiny", masking="blocks")
    with pytest.raises(ConfigError, match="split_seed"):
        TrainConfig.from_preset("tiny", split_seed="zero")


def _ablations_module():
    return load_script(ABLATIONS, "ablations_under_test")


def test_real_validation_mse_drops_engine_spectra_and_repeats_exactly(corpus):
    from omnispectra.training import SpectraDataModule
    from omnispectra.training.validation import reconstruction_mse_by_survey

    torch.manual_seed(0)
    model = OmniSpectra(OmniSpectraConfig(dim=32, n_layers=1, n_heads=2))
    first = reconstruction_mse_by_survey(model, SpectraDataModule(corpus, batch_size=4, num_workers=0,
                                                                 val_fraction=0.3, seed=0))
    again = reconstruction_mse_by_survey(model, SpectraDataModule(corpus, batch_size=7, num_workers=0,
                                                                 val_fraction=0.3, seed=0))
    surveys = set(first) - {"all", "mean_of_surveys"}
    assert surveys and surveys <= {"sdss", "miles"} and first["all"]["n_spectra"] > 0
    assert first["all"]["mse"] == pytest.approx(again["all"]["mse"], rel=1e-6) and first["all"]["mse"] > 0
    assert sum(first[s]["n_spectra"] for s in surveys) == first["all"]["n_spectra"]


def test_paired_summary_statistics():
    ablations = _ablations_module()
    scores = {ablations.FULL: {1: 1.0, 2: 2.0, 3: 3.0}, "other": {1: 1.5, 2: 2.4, 3: 3.7}}
    summary = ablations.paired_summary(scores, [1, 2, 3])
    assert summary[ablations.FULL]["mean"] == pytest.approx(2.0)
    assert summary[ablations.FULL]["std"] == pytest.approx(1.0)
    other = summary["other"]
    assert other["diff"] == pytest.approx([0.5, 0.4, 0.7])
    assert other["diff_mean"] == pytest.approx(1.6 / 3)
    assert other["diff_se"] == pytest.approx(np.std([0.5, 0.4, 0.7], ddof=1) / np.sqrt(3))
    assert other["beyond_2se"] is True
    assert "| other |" in ablations.markdown(summary, 3)
