"""The ``omnispectra`` command line: a thin click layer over the Python API."""

from __future__ import annotations

import platform

import click

from . import __version__


#: Inputs of the commands that read spectra: never checked by click (a missing or
#: unreadable path is reported by omnispectra.inputs and skipped like any bad input).
_INPUT_PATHS = click.Path(exists=False, readable=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="omnispectra")
def main() -> None:
    """OmniSpectra: a native-resolution foundation model for astronomical spectra."""


@main.command()
def info() -> None:
    """Print versions, the compute device and which attention kernels are available."""
    import torch

    from .model import attention_backends

    click.echo(f"omnispectra {__version__}")
    click.echo(f"python      {platform.python_version()}")
    click.echo(f"torch       {torch.__version__}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    click.echo(f"device      {device}" + (f" ({torch.cuda.get_device_name(0)})" if device == "cuda" else ""))
    click.echo("attention   " + ", ".join(f"{name}={'yes' if ok else 'no'}"
                                          for name, ok in attention_backends().items()))
    _echo_flash_attn_and_models()


def _echo_flash_attn_and_models() -> None:
    """The flash-attn package and the models this installation knows (``omnispectra info``)."""
    import importlib.metadata
    import os

    from .exceptions import OmniSpectraError
    from .pretrained import cache_dir, list_models

    try:
        flash = f"installed ({importlib.metadata.version('flash-attn')})"
    except importlib.metadata.PackageNotFoundError:
        flash = "not installed (optional: pip install 'omnispectra[gpu]')"
    click.echo(f"flash-attn  {flash}")
    try:
        models = list_models()
    except OmniSpectraError as err:
        click.echo(f"models      registry unreadable: {err}")
        return
    click.echo(f"models      (cache: {cache_dir()})")
    for m in models:
        if m["source"] == "bundled":
            where = "bundled" if m["available"] else "bundled, missing from this installation"
        else:
            where = "registry, cached" if m["cached"] else f"registry, not downloaded ({m['url']})"
        click.echo(f"  {m['name']:<20} {where}")
    override = os.environ.get("OMNISPECTRA_DEFAULT_MODEL")
    if override:
        click.echo(f"  'default' currently means {override} (OMNISPECTRA_DEFAULT_MODEL)")


@main.command("tokenize")
@click.argument("inputs", nargs=-1, type=_INPUT_PATHS)
@click.option("--examples", is_flag=True, help="Use the real example spectra shipped with the package.")
@click.option("--format", "fmt", default=None, help="Force a reader (see `omnispectra.io.list_formats()`).")
@click.option("--preset", default=None, type=click.Choice(["tiny", "small", "paper"]),
              help="Also run an (untrained) encoder of this preset and report the embedding shape.")
def tokenize_command(inputs: tuple[str, ...], examples: bool, fmt: str | None, preset: str | None) -> None:
    """Read spectra, cut them into tokens and summarize them (one line per spectrum)."""
    from .api import token_summary

    rows, failures = token_summary(_sources(inputs, examples), format=fmt, preset=preset)
    for line in rows:
        click.echo(line)
    for path, reason in failures:
        click.echo(f"skipped {path}: {reason}", err=True)
    if len(rows) <= 1:  # header only
        raise SystemExit(1)


def _sources(inputs, examples: bool) -> list[str]:
    """Input paths plus, with ``--examples``, the bundled example spectra."""
    sources = [str(p) for p in inputs]
    if examples:
        from .examples import example_paths

        sources += [str(p) for p in example_paths()]
    if not sources:
        raise click.UsageError("give spectrum files or directories, or --examples")
    return sources


def _report_skipped(table) -> int:
    """Print every skipped input of a result table on stderr; return how many."""
    skipped = table.meta.get("skipped", [])
    for entry in skipped:
        name = entry["source"] + (f" [{entry['id']}]" if entry.get("id") else "")
        click.echo(f"skipped {name}: {entry['reason']}", err=True)
    return len(skipped)


@main.command("embed")
@click.argument("inputs", nargs=-1, type=_INPUT_PATHS, metavar="FILE_OR_DIR...")
@click.option("--examples", is_flag=True, help="Also embed the example spectra shipped with the package.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="embeddings.npy (ids go to embeddings.ids.txt) or embeddings.h5 "
                   "(datasets 'embeddings' and 'ids').")
@click.option("--model", "model_name", default="default", show_default=True,
              help="Model name (see `omnispectra info`) or weights file.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cuda if available).")
@click.option("--dtype", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="Compute precision: auto = bf16 autocast where the hardware runs it natively, else fp32.")
@click.option("--format", "fmt", default=None, help="Force a reader (see `omnispectra.io.list_formats()`).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def embed_command(inputs, examples, output, model_name, batch_size, device, dtype, fmt, quiet) -> None:
    """Embed every spectrum in FILE_OR_DIR... and save the vectors with their ids.

    Files that cannot be read and spectra that cannot be tokenized are reported and
    skipped; the command fails only when nothing was embedded.
    """
    from pathlib import Path

    import numpy as np

    from .api import embed
    from .exceptions import OmniSpectraError
    from .pretrained import load_model

    out = Path(output)
    if out.suffix.lower() not in (".npy", ".h5", ".hdf5"):
        raise click.UsageError("--output must end in .npy, .h5 or .hdf5")
    sources = _sources(inputs, examples)
    try:
        model = load_model(model_name, device=device)
    except OmniSpectraError as err:
        raise click.ClickException(str(err)) from err
    table = embed(sources, model=model, batch_size=batch_size, dtype=dtype, format=fmt,
                  progress=False if quiet else None, on_error="skip", as_table=True)
    n_skipped = _report_skipped(table)
    if not len(table):
        raise click.ClickException("no spectrum could be embedded; nothing written")
    vectors, ids = np.asarray(table["embedding"]), [str(i) for i in table["id"]]
    _save_embeddings(out, vectors, ids, model)
    click.echo(f"embedded {len(ids)} spectra ({vectors.shape[1]}-d, model {model_name!r}) -> {out}"
               + (f"; {n_skipped} skipped" if n_skipped else ""), err=True)


def _save_embeddings(out, vectors, ids, model) -> None:
    """Write ``.npy`` + ``.ids.txt``, or an HDF5 file with ``embeddings`` and ``ids``."""
    import json
    import os

    import numpy as np

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix.lower() == ".npy":
        with open(tmp, "wb") as fh:
            np.save(fh, vectors)
        id_file = out.with_suffix(".ids.txt")
        id_file.write_text("".join(f"{i}\n" for i in ids))
    else:
        import h5py

        with h5py.File(tmp, "w") as fh:
            fh.create_dataset("embeddings", data=vectors)
            fh.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
            fh.attrs["omnispectra_version"] = __version__
            fh.attrs["model"] = str(model.info.get("name", ""))
            fh.attrs["model_info"] = json.dumps(model.info, default=str)
    os.replace(tmp, out)


@main.command("plot")
@click.argument("path", type=_INPUT_PATHS)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Image file (png, pdf, svg ...).")
@click.option("--model", "model_name", default="default", show_default=True,
              help="Model name (see `omnispectra info`) or weights file.")
@click.option("--index", default=0, show_default=True, type=click.IntRange(min=0),
              help="Which spectrum of a file that holds several.")
@click.option("--seed", default=0, show_default=True, help="Seed of the chunk mask.")
@click.option("--no-mask", is_flag=True, help="Reconstruct the whole spectrum without masking.")
@click.option("--device", default=None, help="torch device (default: cuda if available).")
@click.option("--format", "fmt", default=None, help="Force a reader (see `omnispectra.io.list_formats()`).")
def plot_command(path, output, model_name, index, seed, no_mask, device, fmt) -> None:
    """Mask chunks of the spectrum in PATH, reconstruct them and plot the result."""
    from . import io
    from .api import reconstruct
    from .exceptions import OmniSpectraError
    from .pretrained import load_model

    try:
        from matplotlib.figure import Figure

        from .plotting import plot_reconstruction
    except ImportError as err:
        raise click.ClickException(
            f'plotting needs matplotlib ({err}); pip install "omnispectra[plot]"') from err
    from .inputs import check_readable_file

    try:
        spectra = io.read(check_readable_file(path), format=fmt)
        if index >= len(spectra):
            raise click.ClickException(f"{path} holds {len(spectra)} spectra; --index {index} is out of range")
        model = load_model(model_name, device=device)
        result = reconstruct(spectra[index], model=model, mask=False if no_mask else None, seed=seed)
    except OmniSpectraError as err:
        raise click.ClickException(str(err)) from err
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    plot_reconstruction(result, ax=fig.add_subplot())
    fig.savefig(output, dpi=120)
    click.echo(f"{result.id}: masked MSE {result.mse:.4g} -> {output}", err=True)


@main.group()
def corpus() -> None:
    """Build and inspect HDF5 training corpora (one file per survey)."""


@corpus.command("build")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(),
              help="corpus.h5 (corpus-<survey>.h5 when several surveys) or a directory (<survey>.h5).")
@click.option("--survey", default=None, help="Override the survey of every spectrum (one output file).")
@click.option("--only", "only", multiple=True, help="Keep only this survey (repeatable).")
@click.option("--format", "fmt", default=None, help="Force a reader (see `omnispectra.io.list_formats()`).")
@click.option("--compression", type=click.Choice(["gzip", "lzf", "none"]), default="gzip", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace existing output files (once the new ones are complete).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def corpus_build(inputs, output, survey, only, fmt, compression, overwrite, quiet) -> None:
    """Convert spectrum files, directories or globs INPUTS into HDF5 corpora."""
    from .corpus import build_corpus

    try:
        report = build_corpus(list(inputs), output, survey=survey, format=fmt, progress=not quiet,
                              only_surveys=list(only) or None, overwrite=overwrite,
                              compression=None if compression == "none" else compression)
    except (OSError, ValueError) as err:  # incl. FileExistsError, CorpusError, nothing readable
        raise click.ClickException(str(err)) from err
    click.echo(report.summary())


@corpus.command("info")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def corpus_info_command(paths, as_json) -> None:
    """Summarize corpus files: counts, pixel lengths, wavelength ranges, labels per survey."""
    import json

    from .corpus import corpus_info, format_corpus_info

    from .exceptions import CorpusError

    try:
        info = corpus_info(list(paths))
    except CorpusError as err:
        raise click.ClickException(str(err)) from err
    click.echo(json.dumps(info, indent=2) if as_json else format_corpus_info(info))


def _parse_overrides(pairs: tuple[str, ...]) -> dict:
    import yaml

    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--set")
        values[key.strip().replace("-", "_")] = yaml.safe_load(raw)
    return values


@main.command()
@click.argument("corpus", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--preset", default=None, help="Training preset: tiny, small or paper (default tiny).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML file of training settings (see omnispectra.training.TrainConfig).")
@click.option("-o", "--output", default=None, help="Run directory (checkpoints, logs, resolved config).")
@click.option("--max-steps", type=int, default=None)
@click.option("--max-time", "max_time_minutes", type=float, default=None, help="Stop after this many minutes.")
@click.option("--batch-size", type=int, default=None, help="Spectra per batch and device.")
@click.option("--num-workers", type=int, default=None)
@click.option("--devices", default=None, help="Lightning devices, e.g. 'auto', 2 or '0,1'.")
@click.option("--precision", default=None, help="e.g. 32-true, bf16-mixed (default: auto).")
@click.option("--seed", type=int, default=None)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any setting, e.g. --set lr=3e-4 --set model='{local_pe: false}'.")
@click.option("--resume", is_flag=True, help="Continue from <output>/checkpoints/last.ckpt.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(corpus, preset, config_file, output, max_steps, max_time_minutes, batch_size, num_workers,
          devices, precision, seed, overrides, resume, quiet) -> None:
    """Pretrain OmniSpectra by masked reconstruction on corpus files (Lightning).

    Settings resolve as: preset < --config file (or, with --resume, the run's saved
    config.yaml) < explicit options < --set. The resolved settings are saved as
    <output>/config.yaml.
    """
    from pathlib import Path

    from .exceptions import MissingDependencyError
    from .training import require_lightning
    from .training.train import TrainConfig, train as run_training

    try:
        require_lightning()
    except MissingDependencyError as err:
        raise click.ClickException(str(err)) from err
    options = {"corpus": [str(p) for p in corpus] or None, "output": output, "max_steps": max_steps,
               "max_time_minutes": max_time_minutes, "batch_size": batch_size, "num_workers": num_workers,
               "devices": devices, "precision": precision, "seed": seed}
    options = {k: v for k, v in options.items() if v is not None}
    options.update(_parse_overrides(overrides))
    if quiet:
        options["progress"] = False
    saved = Path(output) / "config.yaml" if output else None
    try:
        if config_file:
            config = TrainConfig.from_yaml(config_file, base=TrainConfig.from_preset(preset) if preset else None)
        elif resume and saved is not None and saved.is_file():
            config = TrainConfig.from_yaml(saved)
        else:
            config = TrainConfig.from_preset(preset or "tiny")
        config = config.replace(**options)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    result = run_training(config, resume=resume)
    click.echo(f"steps {result['steps']}  val_loss {result['val_loss']}  wall {result['wall_time_s']:.0f} s")
    click.echo(f"last checkpoint {result['last_checkpoint']}")


@main.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Output weights file (.safetensors).")
def export(checkpoint: str, output: str) -> None:
    """Export a training checkpoint's encoder as a safetensors weights file; print its sha256."""
    from .training.train import export_checkpoint

    digest = export_checkpoint(checkpoint, output)
    click.echo(f"wrote {output}")
    click.echo(f"sha256 {digest}")


_TABLE_FORMATS = {".ecsv": "ascii.ecsv", ".csv": "ascii.csv", ".fits": "fits", ".fit": "fits"}


@main.command("classify")
@click.argument("inputs", nargs=-1, type=_INPUT_PATHS, metavar="FILE_OR_DIR...")
@click.option("--examples", is_flag=True, help="Also classify the example spectra shipped with the package.")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="Write the table: .ecsv, .csv or .fits (by extension).")
@click.option("--model", "model_name", default="default", show_default=True,
              help="Encoder (name or weights file); must match the probe.")
@click.option("--probe", "probe_path", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Probe file (default: the bundled source-class probe).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cuda if available).")
@click.option("--format", "fmt", default=None, help="Force a reader (see `omnispectra.io.list_formats()`).")
@click.option("--quiet", is_flag=True, help="Do not print the table (with -o).")
def classify_command(inputs, examples, output, model_name, probe_path, batch_size, device, fmt,
                     quiet) -> None:
    """Classify every spectrum in FILE_OR_DIR... as GALAXY, QSO or STAR.

    Prints a table (id, class, prob_GALAXY, prob_QSO, prob_STAR) and/or writes it with
    -o. Unreadable files and untokenizable spectra are reported with the reason and
    skipped; the command fails only when nothing was classified.
    """
    from pathlib import Path

    from .api import classify, resolve_probe
    from .exceptions import OmniSpectraError
    from .pretrained import load_model

    out = Path(output) if output else None
    if out is not None and out.suffix.lower() not in _TABLE_FORMATS:
        raise click.UsageError("--output must end in .ecsv, .csv or .fits")
    sources = _sources(inputs, examples)
    try:
        model = load_model(model_name, device=device)
        probe = resolve_probe(probe_path, "source_class")
        probe.check_encoder(model)
    except OmniSpectraError as err:
        raise click.ClickException(str(err)) from err
    table = classify(sources, model=model, probe=probe, batch_size=batch_size, progress=False,
                     format=fmt, on_error="skip")
    n_skipped = _report_skipped(table)
    if not len(table):
        raise click.ClickException("no spectrum could be classified")
    for name in table.colnames:
        if name.startswith("prob_"):
            table[name].info.format = ".3f"
    if out is None or not quiet:
        shown = table[[c for c in table.colnames if c != "source_file"]]  # long paths: in -o only
        for line in shown.pformat(max_lines=-1, max_width=-1):
            click.echo(line)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        if _TABLE_FORMATS[out.suffix.lower()] == "fits":  # a FITS header holds no list of dicts
            del table.meta["skipped"]
        table.write(out, format=_TABLE_FORMATS[out.suffix.lower()], overwrite=True)
        note = f"; {n_skipped} skipped" if n_skipped else ""
        click.echo(f"classified {len(table)} spectra -> {out}{note}", err=True)


@main.command("evaluate")
@click.argument("corpus", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--model", "model_name", default="default", show_default=True,
              help="Encoder: model name or weights file.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Output directory (ECSV tables, results.md, PNG plots).")
@click.option("--tasks", default="source_class,stellar_params,redshift", show_default=True,
              help="Comma-separated tasks.")
@click.option("--methods", default=None, help="Comma-separated methods (default: every method of each task).")
@click.option("--runs", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--max-per-dataset", default=20000, show_default=True, type=click.IntRange(min=2))
@click.option("--finetune", is_flag=True, help="Train the encoder with the zero-/few-shot heads (slow).")
@click.option("--baseline-pixels", default=2048, show_default=True, type=click.IntRange(min=32),
              help="Largest resampled length for the supervised baselines.")
@click.option("--device", default=None, help="torch device for the encoder.")
@click.option("--quiet", is_flag=True, help="No per-run progress lines.")
def evaluate_command(corpus, model_name, output, tasks, methods, runs, max_per_dataset, finetune,
                     baseline_pixels, device, quiet) -> None:
    """Downstream evaluation (paper protocol) of an encoder on the labelled spectra of CORPUS...

    Source class, stellar parameters and redshift from the corpus labels; 50/50 splits
    grouped by object, RUNS seeds; probes, supervised baselines, PCA+ridge, kNN and a
    trivial baseline. Needs scikit-learn and matplotlib (the ``eval`` extra).
    """
    from .exceptions import MissingDependencyError, OmniSpectraError
    from .training import require_lightning

    try:
        require_lightning("eval")
        from .evaluation.harness import evaluate
    except MissingDependencyError as err:
        raise click.ClickException(str(err)) from err
    except ImportError as err:  # pragma: no cover - scikit-learn missing
        raise click.ClickException(f'{err}; install the eval extra: pip install "omnispectra[eval]"') from err
    say = None if quiet else (lambda msg: click.echo(msg, err=True))
    try:
        result = evaluate(list(corpus), model=model_name, output=output, tasks=tasks.split(","),
                          methods=methods.split(",") if methods else None, runs=runs,
                          max_per_dataset=max_per_dataset, finetune=finetune,
                          baseline_pixels=baseline_pixels, device=device, progress=say)
    except (OmniSpectraError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(result["report"])
    click.echo(f"wrote {output}/results.ecsv, results.md and plots ({result['seconds']:.0f} s)", err=True)



@main.command("simulate")
@click.argument("output", type=click.Path())
@click.option("-n", "--n-samples", default=1000, show_default=True, help="Engine spectra to write.")
@click.option("--templates", type=click.Path(exists=True, file_okay=False), default=None,
              help="Template folder (redrock/, pyhammer/); default $OMNISPECTRA_TEMPLATES.")
@click.option("--donors", "donors", multiple=True, required=True,
              help="Real spectrum files/folders lending grids and noise (training side only).")
@click.option("--seed", default=0, show_default=True, help="Sample seed (item i = rng(seed, 0, i)).")
@click.option("--split-fraction", default=0.2, show_default=True, help="Validation fraction of the object-hash split.")
@click.option("--split-seed", default=0, show_default=True, help="Seed of the object-hash split.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
def simulate_command(output, n_samples, templates, donors, seed, split_fraction, split_seed, overwrite) -> None:
    """Write N labelled engine spectra (templates observed through real donors) into an HDF5 corpus."""
    from .engine import build_engine, write_engine_corpus
    from .exceptions import OmniSpectraError

    try:
        engine = build_engine(templates, list(donors), fraction=split_fraction, seed=split_seed)
        report = write_engine_corpus(engine, n_samples, output, seed=seed, overwrite=overwrite)
    except (OmniSpectraError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(report.summary())

if __name__ == "__main__":  # pragma: no cover
    main()
