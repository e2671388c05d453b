"""The omnispectra benchmark suite: one command, a printed table per section, one JSON file.

Run from a source checkout (the real spectra are read from ``../shared/data`` or
``$OMNISPECTRA_DATA_DIR``; the bundled examples stand in when that folder is absent)::

    python benchmarks/run.py                       # CPU, presets tiny/small/paper
    python benchmarks/run.py --quick               # a smoke run in well under a minute
    python benchmarks/run.py --device cuda         # on a GPU: adds the varlen kernels
    python benchmarks/run.py --save-tokens T.npz   # tokenized spectra for a machine without the data
    python benchmarks/run.py --tokens T.npz --device cuda

Sections, each measured side by side in the same run (these machines are noisy, so the
ratios are the figures to quote):

``peak``       the machine's own limit: a large matmul's FLOP/s, fp32 and bf16;
``tokenize``   host-side tokenization, spectra/s per survey;
``embed``      inference throughput per preset and survey (SDSS ~3,850 px, APOGEE ~8,600 px,
               DESI ~7,800 px, a short VIPERS-like ~560 px set and a mixed-survey set),
               fp32 vs bf16 autocast, padded-to-max (random batches) vs length-bucketed
               batches, and on CUDA padded SDPA vs the packed varlen kernels; spectra/s,
               valid tokens/s, padding fraction, model FLOP/s and MFU (useful FLOPs of
               the valid tokens, :func:`omnispectra.model.forward_flops`, over the peak
               of the same dtype), and the cosine similarity of bf16 to fp32 embeddings;
``train``      pretraining step throughput (AdamW, masked reconstruction loss) and MFU;
``memory``     peak memory per batch size (CPU: RSS of a fresh process; CUDA: max allocated);
``scaling``    embed time vs tokens per spectrum ``T`` and the fitted exponent of
               ``time ~ T**k`` (1 = linear layers dominate, 2 = attention dominates);
``peer``       the ``spender`` package's encoder (PyPI; ``pip install spender``) on the same
               SDSS spectra next to the omnispectra preset of comparable size;
``bf16``       whether bf16 autocast changes what the shipped predictors say (class agreement,
               stellar-parameter differences, embedding cosine) and how much faster it is;
``files``      files end to end next to model only: ``omnispectra.embed`` on SDSS spec files
               (read + tokenize + embed, with 0 and with 1 reading thread) and on the same
               spectra already tokenized, float32, small preset (tiny with ``--quick``);
               spectra/s side by side and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_time, data_dir  # noqa: E402

from omnispectra.collate import Collator, collate, length_sorted_batches, padding_fraction  # noqa: E402
from omnispectra.model import PRESETS, OmniSpectra, OmniSpectraConfig, attention_backends, forward_flops  # noqa: E402
from omnispectra.tokenizer import Normalization, Tokens, spectrum_arrays, tokenize  # noqa: E402

# survey -> (file patterns under the data folder, what the issue calls it)
SURVEYS = {
    "sdss": (["sdss/**/spec-*.fits"], "SDSS ~3,850 px"),
    "apogee": (["apogee/aspcapStar/*.fits", "apogee/apStar/*.fits"], "APOGEE ~8,600 px"),
    "desi": (["desi/coadd-*.fits"], "DESI ~7,800 px"),
}
# spectra with the shipped predictors' kind of labels, for the bf16-vs-fp32 accuracy check
ACCURACY_SURVEYS = {
    "sdss": (["sdss/**/spec-*.fits"], "SDSS"),
    "lamost": (["lamost/**/spec-*.fits*"], "LAMOST LRS"),
    "miles": (["miles/MILES_res2.50_star_m*.fits"], "MILES stars"),
}
SHORT = "vipers_like"  # SDSS 5,500-9,200 A binned 4:1: ~560 px at R~500, like VIPERS
MIXED = "mixed"


# ---------------------------------------------------------------------------------------
# inputs


def _read_survey(root: Path | None, survey: str, limit: int, surveys: dict = SURVEYS) -> list:
    """Up to ``limit`` spectra of ``survey`` as specutils objects (bundled example if no data)."""
    from omnispectra.examples import example_path
    from omnispectra.io import iter_spectra

    files = []
    if root is not None:
        files = sorted({p for pat in surveys[survey][0] for p in root.glob(pat)})
    if not files and survey == "sdss":
        files = [example_path("sdss")]
    out = []
    for spec in iter_spectra(files, on_error="skip"):
        out.append(spec)
        if len(out) >= limit:
            break
    return out


def _short_version(wave, flux, ivar, bad) -> tuple[np.ndarray, ...] | None:
    """A VIPERS-like short spectrum from SDSS arrays: 5,500-9,200 A, 4 pixels binned into 1."""
    sel = np.flatnonzero((wave >= 5500) & (wave <= 9200))
    sel = sel[: sel.size // 4 * 4]
    if sel.size < 80:
        return None
    good = (~bad[sel] & (ivar[sel] > 0)).reshape(-1, 4)
    n_good = good.sum(1)
    binned = (np.where(good, flux[sel].reshape(-1, 4), 0.0).sum(1)) / np.maximum(n_good, 1)
    # the count of good pixels stands in for the inverse variance (only ivar > 0 matters here)
    return wave[sel].reshape(-1, 4).mean(1), binned, n_good.astype(float), n_good == 0


def load_token_sets(root: Path | None, per_survey: int) -> tuple[dict[str, list[Tokens]], dict[str, list]]:
    """Tokenized real spectra per survey plus the VIPERS-like and the mixed sets, and the
    ``(wavelength, flux, ivar, bad)`` arrays they came from."""
    raw: dict[str, list] = {}
    for survey in SURVEYS:
        raw[survey] = [spectrum_arrays(s) for s in _read_survey(root, survey, per_survey)]
    raw[SHORT] = [a for a in (_short_version(*arrays) for arrays in raw["sdss"]) if a is not None]
    sets = {name: _repeat([tokenize(*a) for a in arrays], per_survey)
            for name, arrays in raw.items() if arrays}
    # the mixed set takes half of each set, so its lengths span ~55 to ~860 tokens
    rng = np.random.default_rng(0)
    mixed = [t for v in sets.values() for t in v[: max(1, per_survey // 2)]]
    sets[MIXED] = [mixed[i] for i in rng.permutation(len(mixed))]
    return sets, raw


def _repeat(items: list, n: int) -> list:
    """``items`` cycled to length ``n`` (a survey with few files still fills its batches)."""
    return [items[i % len(items)] for i in range(n)] if items else []


def save_token_sets(sets: dict[str, list[Tokens]], path: Path) -> None:
    arrays = {}
    for name, toks in sets.items():
        arrays[f"{name}/lengths"] = np.array([t.n_tokens for t in toks])
        for field in ("tokens", "wavelength", "valid", "pixel_valid"):
            arrays[f"{name}/{field}"] = np.concatenate([getattr(t, field) for t in toks])
    np.savez_compressed(path, **arrays)


def load_saved_token_sets(path: Path) -> dict[str, list[Tokens]]:
    data = np.load(path)
    names = sorted({k.split("/")[0] for k in data.files})
    sets = {}
    for name in names:
        cuts = np.cumsum(data[f"{name}/lengths"])[:-1]
        parts = {f: np.split(data[f"{name}/{f}"], cuts)
                 for f in ("tokens", "wavelength", "valid", "pixel_valid")}
        sets[name] = [Tokens(tokens=parts["tokens"][i], wavelength=parts["wavelength"][i],
                             valid=parts["valid"][i], pixel_valid=parts["pixel_valid"][i],
                             normalization=Normalization(0.0, 1.0),
                             n_pixels=int(parts["tokens"][i].shape[0] * 10 + 10))
                      for i in range(len(parts["tokens"]))]
    return sets


# ---------------------------------------------------------------------------------------
# measurement helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeat: int) -> float:
    """Best wall time of ``repeat`` calls after a warm-up, with device synchronisation."""
    def run():
        fn()
        sync(device)
    return best_time(run, repeat=repeat)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeat: int = 3) -> float:
    """FLOP/s of an ``n x n x n`` matrix product in ``dtype`` on ``device``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    inner = 10 if device.type == "cuda" else 1
    seconds = timed(lambda: [a @ b for _ in range(inner)], device, repeat)
    return 2.0 * n ** 3 * inner / seconds


def batches_of(tokens: list[Tokens], batch_size: int, bucketed: bool) -> list[list[int]]:
    """Length-bucketed (sorted) or input-order batches (input order is shuffled already)."""
    if bucketed:
        return length_sorted_batches([t.n_tokens for t in tokens], batch_size)
    return [list(range(i, min(i + batch_size, len(tokens)))) for i in range(0, len(tokens), batch_size)]


def autocast(device: torch.device, dtype: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")


def build_model(preset: str, device: torch.device, attention: str = "sdpa") -> OmniSpectra:
    """A freshly initialised preset; ``attention`` may end in ``+compile`` (torch.compile of encode)."""
    torch.manual_seed(0)
    impl, _, compiled = attention.partition("+")
    model = OmniSpectra(OmniSpectraConfig.from_preset(preset, attention=impl)).to(device)
    return model.compile_encoder() if compiled else model


def attention_impls(device: torch.device, args: argparse.Namespace, compile_ok: bool = False) -> list[str]:
    """Attention paths to compare: SDPA, and on CUDA the installed varlen kernels (``+compile``
    variants too when ``--compile`` is given and the section allows it)."""
    impls = ["sdpa"]
    if device.type == "cuda":
        impls += [name for name, ok in attention_backends().items() if ok and name != "sdpa"]
    if args.compile and compile_ok:
        impls += [f"{impl}+compile" for impl in impls]
    return [impl for impl in impls if not args.attention or impl in args.attention]


# ---------------------------------------------------------------------------------------
# sections


def section_peak(device, args) -> dict:
    n = 8192 if device.type == "cuda" else 1536
    peak = {"fp32": matmul_peak(device, torch.float32, n), "bf16": matmul_peak(device, torch.bfloat16, n),
            "matmul_n": n}
    print(f"\n== peak: {n}^3 matmul  fp32 {peak['fp32'] / 1e9:,.1f} GFLOP/s   "
          f"bf16 {peak['bf16'] / 1e9:,.1f} GFLOP/s")
    return peak


def section_tokenize(raw, args) -> list[dict]:
    print("\n== tokenize (host): tokenize() on (wavelength, flux, ivar, bad) arrays in memory")
    rows = []
    for name, arrays in raw.items():
        arrays = arrays[:16]
        seconds = best_time(lambda arrays=arrays: [tokenize(*a) for a in arrays], repeat=3)
        rows.append({"set": name, "spectra_per_s": len(arrays) / seconds,
                     "pixels": float(np.mean([a[0].size for a in arrays]))})
        print(f"  {name:<12} {rows[-1]['pixels']:>7.0f} px   {rows[-1]['spectra_per_s']:>9,.0f} spectra/s")
    return rows


def prepare(tokens: list[Tokens], batches: list[list[int]], device: torch.device) -> list:
    """Padded batches already on ``device`` (host collation is timed in the tokenize section)."""
    return [collate([tokens[i] for i in idx]).to(device) for idx in batches]


def embed_once(model, prepared, device, dtype, order=None):
    """Embeddings of prepared batches; rows back in input order when ``order`` (the batches) is given."""
    out = []
    with torch.inference_mode(), autocast(device, dtype):
        for b in prepared:
            e = model.embed(b.tokens, b.wavelength, b.valid)
            if order is not None:
                out.append(e.float().cpu())
    return torch.cat(out)[np.argsort(np.concatenate(order))] if order is not None else None


def section_embed(sets, peak, device, args) -> list[dict]:
    print(f"\n== embed: batch {args.batch_size}, {device.type}")
    print(f"  {'preset':<6} {'set':<12} {'tok/sp':>6} {'dtype':<5} {'batching':<9} {'attention':<12} "
          f"{'spectra/s':>9} {'tokens/s':>10} {'pad':>6} {'GFLOP/s':>9} {'MFU':>6} {'ratio':>6} "
          f"{'cos min':>8}")
    rows = []
    for preset in args.presets:
        for name in args.sets:
            tokens = sets.get(name)
            if not tokens:
                continue
            batch_size = args.batch_size
            if preset == "paper" and device.type == "cpu":  # a few spectra/s: a subset, smaller batches
                tokens, batch_size = tokens[: args.n_paper], min(batch_size, 4)
            lengths = np.array([t.valid.sum() for t in tokens])
            flops = forward_flops(PRESETS[preset], lengths)
            batchings = ["padded", "bucketed"] if name == MIXED else ["bucketed"]
            combos = [(dt, bk, impl) for dt in args.dtypes for bk in batchings
                      for impl in attention_impls(device, args,
                                                  compile_ok=name == MIXED and bk == "bucketed")]
            reference = {}
            for dtype, batching, impl in combos:
                model = build_model(preset, device, impl).eval()
                batches = batches_of(tokens, batch_size, batching == "bucketed")
                prepared = prepare(tokens, batches, device)
                seconds = timed(lambda model=model, prepared=prepared, dtype=dtype:
                                embed_once(model, prepared, device, dtype), device, args.repeat)
                row = {"preset": preset, "set": name, "dtype": dtype, "batching": batching, "attention": impl,
                       "n_spectra": len(tokens), "mean_tokens": float(np.mean([t.n_tokens for t in tokens])),
                       "spectra_per_s": len(tokens) / seconds, "tokens_per_s": lengths.sum() / seconds,
                       "padding_fraction": padding_fraction([t.n_tokens for t in tokens], batches),
                       "flops_per_s": flops / seconds, "mfu": flops / seconds / peak[dtype]}
                row["speedup_vs_first"] = reference.setdefault("time", seconds) / seconds
                # accuracy against fp32 SDPA (on CUDA the fp32 reference is computed, not timed)
                ref = reference.get("fp32")
                if ref is None:
                    ref = reference["fp32"] = embed_once(build_model(preset, device).eval(), prepared,
                                                         device, "fp32", order=batches)
                if dtype != "fp32" or impl != "sdpa":
                    cos = torch.nn.functional.cosine_similarity(
                        embed_once(model, prepared, device, dtype, order=batches), ref, dim=1)
                    row["cosine_min"], row["cosine_mean"] = cos.min().item(), cos.mean().item()
                rows.append(row)
                print(f"  {preset:<6} {name:<12} {row['mean_tokens']:>6.0f} {dtype:<5} {batching:<9} "
                      f"{impl:<12} {row['spectra_per_s']:>9.1f} {row['tokens_per_s']:>10,.0f} "
                      f"{row['padding_fraction']:>6.1%} "
                      f"{row['flops_per_s'] / 1e9:>9.1f} {row['mfu']:>6.1%} {row['speedup_vs_first']:>5.2f}x "
                      f"{row.get('cosine_min', float('nan')):>8.5f}")
    return rows


def section_train(sets, peak, device, args) -> list[dict]:
    print(f"\n== train: AdamW steps on the mixed set, batch {args.batch_size}, bucketed, {device.type}")
    tokens = sets[MIXED]
    batches = batches_of(tokens, args.batch_size, bucketed=True)
    collator = Collator(seed=0)
    prepared = [collator([(i, tokens[i]) for i in idx]).to(device) for idx in batches]
    n_valid = sum(int(b.valid.sum()) for b in prepared)
    rows = []
    print(f"  {'preset':<6} {'dtype':<5} {'attention':<12} {'spectra/s':>9} {'tokens/s':>10} {'GFLOP/s':>9} "
          f"{'MFU':>6}")
    for preset in args.train_presets:
        lengths = np.concatenate([b.valid.sum(1).cpu().numpy() for b in prepared])
        flops = 3.0 * forward_flops(PRESETS[preset], lengths, head=True)
        for dtype in args.dtypes:
            for impl in attention_impls(device, args, compile_ok=True):
                model = build_model(preset, device, impl).train()
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

                def epoch(model=model, opt=opt, dtype=dtype):
                    for b in prepared:
                        with autocast(device, dtype):
                            loss = model.loss(b)
                        loss.backward()
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                seconds = timed(epoch, device, max(1, args.repeat - 1))
                row = {"preset": preset, "dtype": dtype, "attention": impl, "n_spectra": len(tokens),
                       "spectra_per_s": len(tokens) / seconds, "tokens_per_s": n_valid / seconds,
                       "flops_per_s": flops / seconds, "mfu": flops / seconds / peak[dtype]}
                rows.append(row)
                print(f"  {preset:<6} {dtype:<5} {impl:<12} {row['spectra_per_s']:>9.1f} "
                      f"{row['tokens_per_s']:>10,.0f} {row['flops_per_s'] / 1e9:>9.1f} {row['mfu']:>6.1%}")
    return rows


def _rss_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (high-water mark) of this process in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def synthetic_batch(model: OmniSpectra, batch_size: int, n_tok: int, device: torch.device) -> tuple:
    """``(tokens, wavelength, valid)`` of ``batch_size`` all-valid random spectra of ``n_tok`` tokens."""
    tokens = torch.randn(batch_size, n_tok, model.config.token_dim, device=device)
    wavelength = torch.linspace(3600, 10000, n_tok, device=device).expand(batch_size, n_tok).contiguous()
    return tokens, wavelength, torch.ones(batch_size, n_tok, dtype=torch.bool, device=device)


def run_batch(model: OmniSpectra, batch: tuple, mode: str) -> None:
    """One training forward/backward (``mode="train"``) or one embedding pass."""
    if mode == "train":
        model.train()
        model.reconstruct(*batch).float().square().mean().backward()
    else:
        with torch.inference_mode():
            model.embed(*batch)


def _rss_probe(preset: str, batch_size: int, n_tok: int, mode: str) -> dict:
    """Run in a fresh process: RSS before one batch and its peak during the batch (MiB)."""
    model = build_model(preset, torch.device("cpu"))
    batch = synthetic_batch(model, batch_size, n_tok, torch.device("cpu"))
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark (Linux >= 4.0)
    before = _rss_mib("VmRSS")
    run_batch(model, batch, mode)
    return {"before_mib": before, "peak_mib": _rss_mib("VmHWM")}


def section_memory(device, args) -> list[dict]:
    n_tok = 400  # an SDSS-length spectrum
    measured = ("max allocated" if device.type == "cuda"
                else "peak RSS of a fresh process minus RSS before the batch")
    print(f"\n== memory: {n_tok} tokens per spectrum, {device.type} ({measured})")
    rows = []
    for preset in args.memory_presets:
        for mode in ("embed", "train"):
            for bs in args.memory_batch_sizes:
                if device.type == "cuda":
                    model = build_model(preset, device)
                    batch = synthetic_batch(model, bs, n_tok, device)
                    torch.cuda.reset_peak_memory_stats(device)
                    base = torch.cuda.memory_allocated(device)
                    with autocast(device, "bf16"):
                        run_batch(model, batch, mode)
                    mib = (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
                    del model, batch
                else:
                    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
                            f"import json, run; print(json.dumps(run._rss_probe({preset!r}, {bs}, {n_tok}, "
                            f"{mode!r})))")
                    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                         check=True)
                    probe = json.loads(out.stdout.strip().splitlines()[-1])
                    mib = probe["peak_mib"] - probe["before_mib"]
                rows.append({"preset": preset, "mode": mode, "batch_size": bs, "n_tokens": n_tok,
                             "peak_mib": mib, "mib_per_spectrum": mib / bs})
                print(f"  {preset:<6} {mode:<5} batch {bs:>4}: {mib:>9.1f} MiB  "
                      f"({mib / bs:.2f} MiB/spectrum)")
    return rows


def section_scaling(device, args) -> dict:
    preset = args.scaling_preset
    model = build_model(preset, device).eval()
    print(f"\n== scaling: {preset} embed time of one spectrum vs tokens T ({device.type}, "
          f"{'bf16' if device.type == 'cuda' else 'fp32'})")
    times = []
    for n_tok in args.scaling_tokens:
        batch = synthetic_batch(model, 1, n_tok, device)

        def run(batch=batch):
            with autocast(device, "bf16" if device.type == "cuda" else "fp32"):
                run_batch(model, batch, "embed")
        times.append(timed(run, device, args.repeat))
        print(f"  T={n_tok:>6}: {times[-1] * 1e3:>9.2f} ms")
    t = np.log(np.asarray(args.scaling_tokens, float))
    y = np.log(np.asarray(times))
    slope = float(np.polyfit(t, y, 1)[0])
    last = float((y[-1] - y[-2]) / (t[-1] - t[-2]))
    print(f"  fitted exponent k (time ~ T**k) over all T: {slope:.2f}; between the two largest T: {last:.2f}")
    return {"preset": preset, "tokens": list(args.scaling_tokens), "seconds": times, "exponent": slope,
            "exponent_largest": last}


def section_bf16(device, args) -> list[dict]:
    """Do the shipped predictors change their answers under bf16 autocast?"""
    import omnispectra

    print("\n== bf16 accuracy: the bundled model and predictors, fp32 vs bf16 autocast, on real spectra")
    model = omnispectra.load_model("default", device=device)
    root = data_dir()
    rows = []
    for survey in ACCURACY_SURVEYS:
        spectra = _read_survey(root, survey, args.per_survey, ACCURACY_SURVEYS)
        if not spectra:
            continue
        row = {"set": survey, "n_spectra": len(spectra)}
        timings = {}
        for dtype in ("fp32", "bf16"):
            start = time.perf_counter()
            emb = omnispectra.embed(spectra, model=model, dtype=dtype, progress=False)
            timings[dtype] = time.perf_counter() - start
            row[f"emb_{dtype}"] = torch.as_tensor(emb)
            row[f"class_{dtype}"] = omnispectra.classify(spectra, model=model, dtype=dtype, progress=False)
            row[f"stars_{dtype}"] = omnispectra.predict_stellar_parameters(spectra, model=model, dtype=dtype,
                                                                           progress=False)
        cos = torch.nn.functional.cosine_similarity(row.pop("emb_fp32"), row.pop("emb_bf16"), dim=1)
        c32, c16 = row.pop("class_fp32"), row.pop("class_bf16")
        s32, s16 = row.pop("stars_fp32"), row.pop("stars_bf16")
        row.update({"embed_speedup": timings["fp32"] / timings["bf16"], "cosine_min": cos.min().item(),
                    "cosine_mean": cos.mean().item(),
                    "class_agreement": float(np.mean(np.asarray(c32["class"]) == np.asarray(c16["class"]))),
                    "max_abs_dprob": float(max(np.max(np.abs(np.asarray(c32[c]) - np.asarray(c16[c])))
                                               for c in c32.colnames if c.startswith("prob_")))})
        for name in ("teff", "logg", "fe_h"):
            diff = np.abs(np.asarray(s32[name], float) - np.asarray(s16[name], float))
            row[f"median_abs_d{name}"], row[f"max_abs_d{name}"] = float(np.median(diff)), float(diff.max())
        rows.append(row)
        print(f"  {survey:<7} n={len(spectra):>3}  bf16 embed {row['embed_speedup']:.2f}x faster, "
              f"cos min {row['cosine_min']:.5f}; class agreement {row['class_agreement']:.1%} "
              f"(max |dp| {row['max_abs_dprob']:.4f}); |dTeff| median {row['median_abs_dteff']:.1f} K "
              f"max {row['max_abs_dteff']:.1f} K, |dlogg| max {row['max_abs_dlogg']:.3f}, "
              f"|d[Fe/H]| max {row['max_abs_dfe_h']:.3f}")
    return rows


def section_peer(sets, raw, device, args) -> dict:
    print("\n== peer: spender's SpectrumEncoder (PyPI) vs omnispectra on the same SDSS spectra")
    try:
        from spender.model import SpectrumEncoder
    except Exception as err:  # noqa: BLE001 - any import failure means "not available"
        why = (f"spender is not importable here ({type(err).__name__}: {err}); `pip install spender` "
               "installs it (it pulls accelerate, datasets, nflows, pyarrow, GPUtil)")
        print("  " + why)
        return {"available": False, "why": why}
    tokens = sets["sdss"]
    # spender reads each spectrum on its native grid: the SDSS arrays cut to a common length
    arrays = _repeat(raw["sdss"], len(tokens))
    n_pix = min(a[1].size for a in arrays)
    flux = torch.tensor(np.stack([np.where(a[3], 0.0, a[1])[:n_pix] for a in arrays]), dtype=torch.float32,
                        device=device)
    torch.manual_seed(0)
    peer = SpectrumEncoder(None, n_latent=10).to(device).eval()
    n_params = sum(p.numel() for p in peer.parameters())
    nearest = min(args.peer_presets, key=lambda p: abs(OmniSpectra(PRESETS[p]).get_num_params() - n_params))
    ours = build_model(nearest, device).eval()
    prepared = prepare(tokens, batches_of(tokens, args.batch_size, bucketed=True), device)
    out = {"available": True, "n_spectra": len(tokens), "n_pixels": n_pix, "peer_params": n_params,
           "preset": nearest, "preset_params": ours.get_num_params(), "rows": []}
    for dtype in args.dtypes:
        def run_peer(dtype=dtype):
            with torch.inference_mode(), autocast(device, dtype):
                for i in range(0, len(flux), args.batch_size):
                    peer(flux[i:i + args.batch_size])
        t_peer = timed(run_peer, device, args.repeat)
        t_ours = timed(lambda dtype=dtype: embed_once(ours, prepared, device, dtype), device, args.repeat)
        row = {"dtype": dtype, "peer_spectra_per_s": len(tokens) / t_peer,
               "omnispectra_spectra_per_s": len(tokens) / t_ours, "ratio": t_peer / t_ours}
        out["rows"].append(row)
        print(f"  {dtype}: spender encoder ({n_params:,} params) {row['peer_spectra_per_s']:,.1f} spectra/s; "
              f"omnispectra {nearest} ({ours.get_num_params():,} params) "
              f"{row['omnispectra_spectra_per_s']:,.1f} "
              f"spectra/s; omnispectra/spender = {row['ratio']:.2f}x")
    return out


# ---------------------------------------------------------------------------------------


def section_files(device, args) -> list[dict]:
    """Files -> embeddings end to end vs. the model alone on the same, already-read spectra."""
    from omnispectra import io
    from omnispectra.api import embed
    from omnispectra.examples import example_path
    from omnispectra.exceptions import OmniSpectraError

    root = data_dir()
    files = sorted((root / "sdss").rglob("spec-*.fits")) if root else []
    files = files[: args.files_n] or [example_path("sdss")]
    preset = "tiny" if args.quick else "small"
    model = build_model(preset, device)
    tokens = []  # what embed(files, on_error="skip") embeds: the readable, tokenizable spectra
    for spec in io.iter_spectra(files, on_error="skip"):
        try:
            tokens.append(tokenize(spec))
        except OmniSpectraError:
            pass
    n = len(tokens)

    def run(spectra, **kw):
        return embed(spectra, model=model, dtype="float32", batch_size=args.batch_size, progress=False, **kw)

    print(f"\n== files: {len(files)} SDSS spec files -> embeddings, {preset} preset, float32 "
          f"(model only = the same spectra already tokenized)")
    rows = [{"mode": "model_only", "spectra_per_s": n / timed(lambda: run(tokens), device, args.repeat)}]
    for workers in (0, 1):
        seconds = timed(lambda workers=workers: run(files, workers=workers, on_error="skip"), device,
                        args.repeat)
        rows.append({"mode": f"files_workers{workers}", "spectra_per_s": n / seconds})
    for row in rows:
        row.update(preset=preset, n_spectra=n,
                   ratio_to_model_only=row["spectra_per_s"] / rows[0]["spectra_per_s"])
        print(f"  {row['mode']:<16} {row['spectra_per_s']:>8.1f} spectra/s   "
              f"{100 * row['ratio_to_model_only']:>5.0f}% of model only")
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny preset, few spectra: a smoke run")
    parser.add_argument("--sections", nargs="+",
                        default=["peak", "tokenize", "embed", "train", "memory", "scaling", "peer", "bf16",
                                 "files"])
    parser.add_argument("--presets", nargs="+", default=None)
    parser.add_argument("--per-survey", type=int, default=None, help="spectra per survey set")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=None, help="timed repetitions (best is kept)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--tokens", type=Path, default=None, help="read token sets saved by --save-tokens")
    parser.add_argument("--save-tokens", type=Path, default=None, help="save the token sets and exit")
    parser.add_argument("--sets", nargs="+", default=None, help="token sets of the embed section")
    parser.add_argument("--train-presets", nargs="+", default=None)
    parser.add_argument("--attention", nargs="+", default=None,
                        help="only these attention paths (e.g. torch_varlen torch_varlen+compile)")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile'd variants (train; embed of the bucketed mixed set)")
    parser.add_argument("--scale", type=int, default=1, help="repeat every token set this many times (GPUs)")
    parser.add_argument("--files", dest="files_n", type=int, default=None,
                        help="SDSS spec files of the files section (default 64, 8 with --quick)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    quick = args.quick
    args.presets = args.presets or (["tiny"] if quick else ["tiny", "small", "paper"])
    args.per_survey = args.per_survey or (8 if quick else 64)
    args.repeat = args.repeat or (1 if quick else 2)
    args.sets = args.sets or ["sdss", "apogee", "desi", SHORT, MIXED]
    args.dtypes = ["fp32", "bf16"] if not cuda else ["bf16"]
    args.n_paper = 16 if not quick else 4        # the paper preset embeds a few spectra/s on a CPU
    args.train_presets = args.train_presets or (["tiny"] if quick else
                                                (["tiny", "small", "paper"] if cuda else ["tiny", "small"]))
    args.memory_presets = ["tiny"] if quick else (["small", "paper"] if cuda else ["tiny", "small"])
    args.memory_batch_sizes = [1, 4] if quick else ([8, 32, 128] if cuda else [1, 8, 32])
    args.scaling_preset = "tiny" if quick else ("paper" if cuda else "small")
    args.scaling_tokens = ([64, 128, 256] if quick else
                           ([256, 512, 1024, 2048, 4096, 8192, 16384] if cuda
                            else [128, 256, 512, 1024, 2048, 4096]))
    args.peer_presets = ["tiny", "small"]
    args.files_n = args.files_n or (8 if quick else 64)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.tokens:  # no raw arrays: the tokenize and peer sections need the spectra themselves
        sets, raw = load_saved_token_sets(args.tokens), {}
        args.sections = [s for s in args.sections if s not in ("tokenize", "peer", "bf16")]
    else:
        sets, raw = load_token_sets(data_dir(), args.per_survey)
    sets = {name: toks * args.scale for name, toks in sets.items()}
    if args.save_tokens:
        save_token_sets(sets, args.save_tokens)
        print(f"wrote {args.save_tokens}: " + ", ".join(f"{k}={len(v)}" for k, v in sets.items()))
        return {}
    machine = {"python": platform.python_version(), "torch": torch.__version__,
               "platform": platform.platform(),
               "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "device": str(device),
               "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               "attention_backends": attention_backends()}
    print(f"omnispectra benchmarks on {machine['gpu'] or platform.processor() or 'cpu'} "
          f"({machine['threads']} torch threads, torch {torch.__version__})")
    print("token sets: " + ", ".join(f"{k}={len(v)} spectra/{np.mean([t.n_tokens for t in v]):.0f} tokens"
                                     for k, v in sets.items()))
    results = {"machine": machine,
               "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    started = time.perf_counter()
    peak = section_peak(device, args)
    results["peak"] = peak
    sections = {"tokenize": lambda: section_tokenize(raw, args),
                "embed": lambda: section_embed(sets, peak, device, args),
                "train": lambda: section_train(sets, peak, device, args),
                "memory": lambda: section_memory(device, args),
                "scaling": lambda: section_scaling(device, args),
                "peer": lambda: section_peer(sets, raw, device, args),
                "bf16": lambda: section_bf16(device, args),
                "files": lambda: section_files(device, args)}
    for name, run_section in sections.items():
        if name not in args.sections:
            continue
        try:
            results[name] = run_section()
        except Exception as err:  # noqa: BLE001 - one failing section must not cost the others
            traceback.print_exc()
            results[name] = {"error": f"{type(err).__name__}: {err}"}
            results["failed"] = results.get("failed", []) + [name]
    results["seconds"] = time.perf_counter() - started
    print(f"\ntotal {results['seconds']:.0f} s" + (f"; FAILED sections: {results['failed']}"
                                                   if results.get("failed") else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=float))
        print(f"wrote {args.json}")
    if results.get("failed"):
        raise SystemExit(1)
    return results


if __name__ == "__main__":
    main()
