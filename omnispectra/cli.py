"""The ``omnispectra`` command line: a thin click layer over the Python API.

Every command follows the same rules:

- **Never destroy a file.** An output that is one of the inputs is always refused; an
  existing output is replaced only with ``--overwrite``; both are checked before any work
  (:func:`omnispectra.fileio.check_output`), and every file is written atomically
  (:func:`omnispectra.fileio.atomic_write`).
- **One-line errors.** A failure prints ``Error: ...`` and exits with 1; bad usage (a
  wrong option, an unusable setting: :class:`~omnispectra.exceptions.ConfigError`)
  exits with 2. No tracebacks (``-vv`` shows them for debugging).
- **Logging.** The library logs through :mod:`logging`; ``-v``/``-vv`` show its INFO/DEBUG
  messages, ``-q`` shows errors only and no progress bars. Messages are written through
  the progress bar's writer, so they never break a bar.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from . import __version__

logger = logging.getLogger(__name__)

#: Inputs of the commands that read spectra: never checked by click (a missing or
#: unreadable path is reported by omnispectra.io.sources and skipped like any bad input).
_INPUT_PATHS = click.Path(exists=False, readable=False)

#: Result-table suffixes (:data:`omnispectra.results.TABLE_FORMATS`), for help texts.
_TABLE_SUFFIXES = ".ecsv, .fits or .h5/.hdf5"


class TqdmLoggingHandler(logging.Handler):
    """Write log records with ``tqdm.write`` on the current stderr (never through a bar)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


class _LightningTips(logging.Filter):
    """Drop Lightning's advertisements ("💡 Tip: ... litlogger / litmodels")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


@contextlib.contextmanager
def logging_for(verbosity: int) -> Iterator[None]:
    """Route the ``omnispectra`` loggers to stderr at the level ``-v``/``-q`` asked for.

    The previous logger state is restored afterwards (the CLI is also run in-process, by
    tests and notebooks).
    """
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    package = logging.getLogger("omnispectra")
    handler = TqdmLoggingHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s" if verbosity > 0 else "%(message)s"))
    # lightning_utilities' rank_zero_info logs to whichever of these was imported last
    tips = [logging.getLogger(f"lightning.{part}.utilities.rank_zero") for part in ("pytorch", "fabric")]
    tip_filter = _LightningTips()
    saved = package.level, package.propagate
    package.addHandler(handler)
    package.setLevel(level)
    package.propagate = False
    for tip_logger in tips:
        tip_logger.addFilter(tip_filter)
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(saved[0])
        package.propagate = saved[1]
        for tip_logger in tips:
            tip_logger.removeFilter(tip_filter)


class CommandError(click.ClickException):
    """A failure shown as one ``Error: ...`` line, exit code 1."""

    exit_code = 1


class UsageFailure(click.ClickException):
    """Unusable settings (:class:`~omnispectra.exceptions.ConfigError`), exit code 2."""

    exit_code = 2


#: The library's keywords (``overwrite=True``, ``resume=True``) in messages, as a CLI user types them.
_KEYWORD_FLAG = re.compile(r"\b(overwrite|resume)=True(?: \(--\1\))?")


def _one_line(err: BaseException) -> str:
    """The error as one line in CLI terms (``--overwrite``, never ``overwrite=True``)."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return _KEYWORD_FLAG.sub(r"--\1", str(err)) or type(err).__name__


class _Main(click.Group):
    """The top-level group: logging set-up and one-line errors for every command."""

    def invoke(self, ctx: click.Context) -> Any:
        from .exceptions import ConfigError, OmniSpectraError

        verbosity = ctx.params.get("verbose", 0) - (1 if ctx.params.get("quiet") else 0)
        with logging_for(verbosity):
            try:
                return super().invoke(ctx)
            except ConfigError as err:
                if verbosity > 1:
                    logger.exception("usage error")
                raise UsageFailure(_one_line(err)) from err
            except (OmniSpectraError, OSError) as err:
                if verbosity > 1:
                    logger.exception("failure")
                raise CommandError(_one_line(err)) from err


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="omnispectra")
@click.option("-v", "--verbose", count=True, help="More messages (-v info, -vv debug with tracebacks).")
@click.option("-q", "--quiet", is_flag=True, help="Errors only, and no progress bars.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """OmniSpectra: a native-resolution foundation model for astronomical spectra."""
    ctx.ensure_object(dict)
    ctx.obj["quiet"] = quiet


def _is_quiet(local_quiet: bool = False) -> bool:
    """The command's ``--quiet`` or the global ``-q``."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    return bool(local_quiet or (root is not None and (root.obj or {}).get("quiet")))


def _progress(local_quiet: bool = False) -> bool | None:
    """``progress=`` for the api: False when quiet, else the default (a bar on a terminal)."""
    return False if _is_quiet(local_quiet) else None


def _say(message: str) -> None:
    """A status line on stderr (suppressed by ``-q``)."""
    if not _is_quiet():
        click.echo(message, err=True)


_quiet_option = click.option("--quiet", is_flag=True, help="No progress bars (as the global -q).")
_overwrite_option = click.option("--overwrite", is_flag=True,
                                 help="Replace an existing output (never one of the inputs).")
_model_option = click.option("--model", "model_name", default="default", show_default=True,
                             help="Model name (see `omnispectra info`) or weights file.")
_device_option = click.option("--device", default=None,
                              help="torch device, e.g. cpu or cuda:0 (default: cuda if available).")
_format_option = click.option("--format", "fmt", default=None,
                              help="Force a reader (see `omnispectra info`).")
_batch_option = click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))


def _check_output(output: str, inputs: Any = (), overwrite: bool = False, table: bool = False) -> Path:
    """Refuse a destructive or unusable output before any work (exit 2 for a bad suffix)."""
    from .exceptions import OutputError
    from .fileio import check_output

    if table:
        from .results import table_format

        try:
            table_format(output)
        except OutputError as err:
            raise click.UsageError(f"--output: {err}") from err
    return check_output(output, inputs, overwrite=overwrite)


#: The api's count keys in ``meta`` and their FITS header names.
_FITS_COUNT_KEYS = {"n_inputs": "NINPUTS", "n_read": "NREAD", "n_skipped": "NSKIPPED"}


def _write_result(table: Any, out: Path, inputs: Any, overwrite: bool) -> None:
    """Write a result table (ECSV/FITS/HDF5 by suffix) atomically.

    FITS gets the counts as ``NINPUTS``/``NREAD``/``NSKIPPED`` and no list of skipped inputs.
    """
    from .results import table_format, write_table

    if table_format(out) == "fits":  # a FITS header holds no list of dicts, and keys of 8 characters
        table = table.copy(copy_data=False)
        table.meta.pop("skipped", None)
        for key, short in _FITS_COUNT_KEYS.items():
            if key in table.meta:
                table.meta[short] = table.meta.pop(key)
    write_table(table, out, overwrite=overwrite, inputs=inputs)


def _load(model_name: str, device: str | None):
    """The encoder, with the device checked first (one-line error for ``gpu``, missing CUDA)."""
    from .runtime import resolve_model

    return resolve_model(model_name, device)


@main.command()
def info() -> None:
    """Print versions, the compute device, attention kernels, readers and known models."""
    import importlib.metadata

    import torch

    from . import io
    from .model import attention_backends

    click.echo(f"omnispectra {__version__}")
    click.echo(f"python      {platform.python_version()}")
    for package in ("numpy", "astropy", "specutils", "torch"):
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a broken install
            version = "not installed"
        click.echo(f"{package:<11} {version}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    click.echo(f"device      {device}" + (f" ({torch.cuda.get_device_name(0)})" if device == "cuda" else ""))
    click.echo("attention   " + ", ".join(f"{name}={'yes' if ok else 'no'}"
                                          for name, ok in attention_backends().items()))
    click.echo("readers     " + ", ".join(io.list_formats()))
    _echo_flash_attn_and_models()
    _echo_probes()
    _echo_templates()


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


def _echo_probes() -> None:
    """The probes bundled with the package (``omnispectra info``): task, file and recipe."""
    from .exceptions import OmniSpectraError
    from .probes import PROBE_FILES, bundled_probe_path, read_probe_header

    click.echo("probes      bundled")
    for task in PROBE_FILES:
        path = bundled_probe_path(task)
        try:
            recipe = read_probe_header(path)["info"].get("recipe", {}).get("name", "")
        except (OmniSpectraError, KeyError) as err:
            recipe = f"unusable: {_one_line(err)}"
        click.echo(f"  {task:<22} {path.name}  {recipe}")


def _echo_templates() -> None:
    """The templates a redshift would use now (``omnispectra info``): source, release, size, hash."""
    from .exceptions import OmniSpectraError
    from .pretrained import templates_info

    try:
        t = templates_info()
    except OmniSpectraError as err:
        click.echo(f"templates   unusable: {_one_line(err)}")
        return
    where = {"bundled": "bundled (compact float32)", "env": "$OMNISPECTRA_TEMPLATES", "path": "given"}
    click.echo(f"templates   {where[t['source']]}: {t['path']}")
    click.echo(f"  release {t['release']}; {t['n_templates']} templates, {t['n_bases']} basis vectors; "
               f"sha256 {t['sha256']}")


@main.command("download")
@click.argument("what", metavar="templates|MODEL")
def download_command(what: str) -> None:
    """Download the full Redrock template files ("templates") or a registry model into the cache.

    Files are checked against the sha256 in the package registry and never downloaded twice.
    The templates' folder is printed: pass it as --templates DIR or set OMNISPECTRA_TEMPLATES=DIR
    to fit with the full files instead of the bundled compact ones.
    """
    from .pretrained import fetch_model, fetch_templates

    if what == "templates":
        root = fetch_templates(progressbar=_progress())
        click.echo(f"templates in {root} (use: --templates {root}, or OMNISPECTRA_TEMPLATES={root})")
    else:
        click.echo(f"model {what} in {fetch_model(what, progressbar=_progress())}")


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


def _table_output_option(required: bool, what: str):
    return click.option("-o", "--output", required=required, type=click.Path(dir_okay=False),
                        help=f"Write the {what} table: {_TABLE_SUFFIXES} (by suffix; Table.read opens it).")


@main.command("embed")
@click.argument("inputs", nargs=-1, type=_INPUT_PATHS, metavar="FILE_OR_DIR...")
@click.option("--examples", is_flag=True, help="Also embed the example spectra shipped with the package.")
@_table_output_option(True, "embeddings")
@_model_option
@_batch_option
@_device_option
@click.option("--dtype", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
              show_default=True,
              help="Compute precision: auto = bf16 autocast on CUDA GPUs, float32 on CPUs.")
@_format_option
@_overwrite_option
@_quiet_option
def embed_command(inputs, examples, output, model_name, batch_size, device, dtype, fmt, overwrite,
                  quiet) -> None:
    """Embed every spectrum in FILE_OR_DIR... and write a table of vectors.

    Columns ``id``, ``source_file``, ``survey`` and ``embedding`` (one vector per row);
    ``meta`` holds the package version, model name and sha256, the precision used and the
    device. Files that cannot be read and spectra that cannot be tokenized are reported
    and skipped; the command fails only when nothing was embedded.
    """
    from .api import embed

    sources = _sources(inputs, examples)
    out = _check_output(output, sources, overwrite, table=True)
    model = _load(model_name, device)
    table = embed(sources, model=model, batch_size=batch_size, dtype=dtype, format=fmt,
                  progress=_progress(quiet), on_error="skip", as_table=True)
    n_skipped = _report_skipped(table)
    if not len(table):
        raise CommandError("no spectrum could be embedded; nothing written")
    _write_result(table, out, sources, overwrite)
    _say(f"embedded {len(table)} spectra ({table['embedding'].shape[1]}-d, model {model_name!r}, "
         f"{table.meta['DTYPE']}) -> {out}" + (f"; {n_skipped} skipped" if n_skipped else ""))


@main.command("plot")
@click.argument("path", type=_INPUT_PATHS)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Image file (png, pdf, svg ...); its folder must exist.")
@_model_option
@click.option("--index", default=0, show_default=True, type=click.IntRange(min=0),
              help="Which spectrum of a file that holds several.")
@click.option("--seed", default=0, show_default=True, help="Seed of the chunk mask.")
@click.option("--no-mask", is_flag=True, help="Reconstruct the whole spectrum without masking.")
@_device_option
@_format_option
@_overwrite_option
def plot_command(path, output, model_name, index, seed, no_mask, device, fmt, overwrite) -> None:
    """Mask chunks of the spectrum in PATH, reconstruct them and plot the result."""
    import numpy as np

    from . import io
    from .api import reconstruct
    from .fileio import atomic_write
    from .io.sources import check_readable_file
    from .spectrum import spectrum_data

    try:
        from matplotlib.figure import Figure

        from .plotting import plot_reconstruction
    except ImportError as err:
        raise CommandError(f'plotting needs matplotlib ({err}); pip install "omnispectra[plot]"') from err
    out = _check_output(output, [path], overwrite)
    if not out.parent.is_dir():  # a typo in the folder: say so before the computation
        raise CommandError(f"the folder of the output {out} does not exist")
    spectra = io.read(check_readable_file(path), format=fmt)
    if index >= len(spectra):
        raise CommandError(f"{path} holds {len(spectra)} spectra; --index {index} is out of range")
    model = _load(model_name, device)
    result = reconstruct(spectra[index], model=model, mask=False if no_mask else None, seed=seed)
    data = spectrum_data(spectra[index])  # the noise band: the file's errors, when it has any
    ivar = np.where(data.bad, 0.0, data.ivar) if data.has_ivar else None
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    plot_reconstruction(result, ax=fig.add_subplot(), ivar=ivar)
    with atomic_write(out) as tmp:
        fig.savefig(tmp, dpi=120, format=out.suffix.lstrip(".").lower() or None)
    _say(f"{result.id}: masked MSE {result.mse:.4g} -> {out}")


@main.command("inspect")
@click.argument("catalogue", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Report folder (index.html and page-NNN.html are written into it).")
@click.option("--templates", default=None, type=click.Path(file_okay=False),
              help="Redrock template folder (with the rrtemplate FITS files in redrock/) for the "
                   "template models; default $OMNISPECTRA_TEMPLATES.")
@click.option("--per-page", default=50, show_default=True, type=click.IntRange(min=1),
              help="Spectra per page.")
@click.option("--max-points", default=1000, show_default=True, type=click.IntRange(min=2),
              help="Most points drawn per spectrum (longer spectra are binned).")
@_overwrite_option
def inspect_command(catalogue, output, templates, per_page, max_points, overwrite) -> None:
    """Write a static HTML report to look at a catalogue made by `classify --full`.

    One panel per spectrum (data with its noise band, the best-fit template at the fitted
    z, lines at that z, class probabilities, decoded flag, stellar parameters), pages of
    --per-page spectra, and a summary page (index.html) that sorts and filters the rows by
    class, flag and confidence. The pages work offline (open index.html). Needs the
    ``report`` extra (Bokeh).
    """
    from .report import inspect_catalogue  # MissingDependencyError names the extra; main() prints it

    index = inspect_catalogue(catalogue, output, templates=templates, per_page=per_page,
                              max_points=max_points, overwrite=overwrite)
    _say(f"report of {catalogue} -> {index}")


@main.group()
def corpus() -> None:
    """Build and inspect HDF5 training corpora (one file per survey)."""


@corpus.command("build")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(),
              help="corpus.h5 (corpus-<survey>.h5 when several surveys) or a directory (<survey>.h5).")
@click.option("--survey", default=None, help="Override the survey of every spectrum (one output file).")
@click.option("--only", "only", multiple=True, help="Keep only this survey (repeatable).")
@_format_option
@click.option("--compression", type=click.Choice(["gzip", "lzf", "none"]), default="gzip", show_default=True)
@click.option("--overwrite", is_flag=True,
              help="Replace existing output files (once the new ones are complete); old per-survey "
                   "files of this output are removed.")
@_quiet_option
def corpus_build(inputs, output, survey, only, fmt, compression, overwrite, quiet) -> None:
    """Convert spectrum files, directories or globs INPUTS into HDF5 corpora."""
    from .corpus import build_corpus

    try:
        report = build_corpus(list(inputs), output, survey=survey, format=fmt, progress=not _is_quiet(quiet),
                              only_surveys=list(only) or None, overwrite=overwrite,
                              compression=None if compression == "none" else compression)
    except ValueError as err:  # nothing readable, or a bad setting
        raise CommandError(str(err)) from err
    click.echo(report.summary())


@corpus.command("info")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def corpus_info_command(paths, as_json) -> None:
    """Summarize corpus files: counts, pixel lengths, wavelength ranges, labels per survey."""
    import json

    from .corpus import corpus_info, format_corpus_info

    info = corpus_info(list(paths))
    click.echo(json.dumps(info, indent=2) if as_json else format_corpus_info(info))


def _parse_overrides(pairs: tuple[str, ...]) -> dict:
    import yaml

    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--set")
        try:
            values[key.strip().replace("-", "_")] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise click.BadParameter(f"{pair!r}: the value is not valid YAML", param_hint="--set") from err
    return values


@main.command()
@click.argument("corpus", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--preset", default=None, help="Training preset: tiny, small or paper (default tiny).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML file of training settings (see omnispectra.training.TrainConfig).")
@click.option("-o", "--output", default=None, help="Run directory (checkpoints, logs, resolved config).")
@click.option("--max-steps", type=int, default=None)
@click.option("--max-time", "max_time_minutes", type=float, default=None,
              help="Stop after this many minutes.")
@click.option("--batch-size", type=int, default=None, help="Spectra per batch and device.")
@click.option("--num-workers", type=int, default=None)
@click.option("--devices", default=None, help="Lightning devices, e.g. 'auto', 2 or '0,1'.")
@click.option("--precision", default=None, help="e.g. 32-true, bf16-mixed (default: auto).")
@click.option("--seed", type=int, default=None)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any setting, e.g. --set lr=3e-4 --set model='{local_pe: false}'.")
@click.option("--resume", is_flag=True, help="Continue from <output>/checkpoints/last.ckpt.")
@click.option("--overwrite", is_flag=True, help="Delete the previous run in <output> and start clean.")
@_quiet_option
def train(corpus, preset, config_file, output, max_steps, max_time_minutes, batch_size, num_workers,
          devices, precision, seed, overrides, resume, overwrite, quiet) -> None:
    """Pretrain OmniSpectra by masked reconstruction on corpus files (Lightning).

    Settings resolve as: preset < --config file (or, with --resume, the run's saved
    config.yaml) < explicit options < --set. The resolved settings are saved as
    <output>/config.yaml. A run folder that holds a previous run needs --resume (go on)
    or --overwrite (start clean). Needs the ``train`` extra.

    The presets run thousands of steps (tiny: 2000), hours on a CPU: after its first
    steps the run says how long it will take; --max-steps N or --max-time MINUTES
    shorten it (the last checkpoint is written either way).
    """
    from .training import require_lightning

    require_lightning()  # MissingDependencyError names the extra; main() prints it on one line
    from .training.train import TrainConfig
    from .training.train import train as run_training

    options = {"corpus": [str(p) for p in corpus] or None, "output": output, "max_steps": max_steps,
               "max_time_minutes": max_time_minutes, "batch_size": batch_size, "num_workers": num_workers,
               "devices": devices, "precision": precision, "seed": seed}
    options = {k: v for k, v in options.items() if v is not None}
    options.update(_parse_overrides(overrides))
    if _is_quiet(quiet):
        options["progress"] = False
    config = TrainConfig.resolve(preset, config_file, resume=resume, options=options)
    result = run_training(config, resume=resume, overwrite=overwrite)
    click.echo(f"steps {result['steps']}  val_loss {result['val_loss']}  wall {result['wall_time_s']:.0f} s")
    click.echo(f"last checkpoint {result['last_checkpoint']}")


@main.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Output weights file (.safetensors).")
@_overwrite_option
def export(checkpoint: str, output: str, overwrite: bool) -> None:
    """Export a training checkpoint's encoder as a safetensors weights file; print its sha256."""
    try:
        from .training.train import export_checkpoint
    except ImportError as err:  # pragma: no cover - lightning missing
        raise CommandError(f"{err}; install the train extra: pip install 'omnispectra[train]'") from err

    digest = export_checkpoint(checkpoint, output, overwrite=overwrite)
    click.echo(f"wrote {output}")
    click.echo(f"sha256 {digest}")


def _print_table(table, drop: tuple[str, ...] = ("source_file",)) -> None:
    """The table on stdout (long paths are in -o only), numbers to their precision
    (:func:`omnispectra.results.apply_formats`; the stored values are not rounded)."""
    from .results import apply_formats

    shown = apply_formats(table[[c for c in table.colnames if c not in drop and table[c].ndim == 1]])
    for line in shown.pformat(max_lines=-1, max_width=-1):
        click.echo(line)


_probe_path = click.Path(exists=True, dir_okay=False)
_templates_option = click.option(
    "--templates", default=None, type=click.Path(),
    help="Redrock template folder (with the rrtemplate FITS files in redrock/) or compact .npz file; "
         "default $OMNISPECTRA_TEMPLATES, else the compact templates bundled with omnispectra (for "
         "classify only with --full). With classify, the class then joins the probe with the "
         "template fit.")


_zbest_option = click.option(
    "--zbest", is_flag=True,
    help="Name the redshift columns as Redrock's zbest (SPECTYPE, SUBTYPE, Z, ZERR, ZWARN = z_flag, CHI2, "
         "DELTACHI2, COEFF; TARGETID = id).")


def _predictor_options(what: str, probe: bool = True):
    """The options every predictor command shares (inputs, output, model, batching, ...)."""
    options = [
        click.argument("inputs", nargs=-1, type=_INPUT_PATHS, metavar="FILE_OR_DIR..."),
        click.option("--examples", is_flag=True,
                     help="Also use the example spectra shipped with the package."),
        _table_output_option(False, what),
        _model_option,
        click.option("--probe", "probe_path", default=None, type=_probe_path,
                     help="Probe file (default: the bundled probe).", hidden=not probe),
        _batch_option,
        _device_option,
        _format_option,
        click.option("--no-table", is_flag=True, help="Do not print the table (with -o)."),
        _overwrite_option,
        _quiet_option,
    ]

    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command

    return apply


def _run_predictor(verb: Any, what: str, inputs, examples, output, model_name, probe_path, batch_size,
                   device, fmt, no_table, overwrite, quiet, zbest: bool = False, **kwargs: Any) -> None:
    """Run one api predictor on the inputs; print and/or write its table (Redrock's names with ``zbest``)."""
    sources = _sources(inputs, examples)
    corpus = {key: kwargs.pop(key) for key in ("shards", "resume", "devices") if key in kwargs}
    if corpus and _all_corpora(sources):
        _run_corpus(verb, sources, output, model_name, probe_path, batch_size, device, overwrite, quiet,
                    **corpus, **kwargs)
        return
    out = _check_output(output, sources, overwrite, table=True) if output else None
    model = _load(model_name, device)
    if probe_path is not None:
        kwargs["probe"] = probe_path  # the api checks it belongs to the encoder before reading inputs
    table = verb(sources, model=model, batch_size=batch_size, progress=_progress(quiet), format=fmt,
                 on_error="skip", **kwargs)
    n_skipped = _report_skipped(table)
    if not len(table):
        raise CommandError(f"no spectrum could be {what.split()[0]}; nothing written")
    if zbest:
        from .results import zbest_table

        table = zbest_table(table)
    if out is None or not no_table:
        _print_table(table)
    if out is not None:
        _write_result(table, out, sources, overwrite)
        _say(f"{len(table)} spectra -> {out}" + (f"; {n_skipped} skipped" if n_skipped else ""))


def _corpus_options(command):
    """Options of a predictor run over HDF5 corpora (Lightning's predict loop, resumable shards)."""
    for option in reversed([
        click.option("--shards", default=None, type=click.Path(file_okay=False),
                     help="Corpus inputs: folder of the resumable shards (default: OUTPUT.shards)."),
        click.option("--resume", is_flag=True, help="Corpus inputs: continue a killed run."),
        click.option("--devices", default="1", show_default=True,
                     help="Corpus inputs: Lightning devices (e.g. 2: two DDP processes, gloo on CPU)."),
    ]):
        command = option(command)
    return command


def _all_corpora(sources: list[str]) -> bool:
    from .corpus import is_corpus

    return all(is_corpus(p) for p in sources)


def _run_corpus(verb: Any, sources: list[str], output, model_name, probe_path, batch_size, device, overwrite,
                quiet, shards, resume, devices, full: bool = True, **kwargs: Any) -> None:
    """The verb over corpora (:func:`omnispectra.training.catalogue.catalogue_corpus`): shards, then
    the catalogue written to ``output``."""
    if not output:
        raise click.UsageError("corpus inputs need -o/--output (the catalogue)")
    if not full:
        raise click.UsageError("classify over corpora gives the full row: add --full")
    try:
        from .training.catalogue import catalogue_corpus
    except ImportError as err:
        raise CommandError(f"{err}; install the train extra: pip install 'omnispectra[train]'") from err
    out = _check_output(output, sources, overwrite or resume, table=True)   # a resumed run ends its catalogue
    names = {"classify": "classify", "predict_redshift": "predict-redshift",
             "predict_stellar_parameters": "predict-stellar"}
    accelerator = "gpu" if device and str(device).startswith(("cuda", "gpu")) else "cpu"
    result = catalogue_corpus(sources, shards or f"{out}.shards", verb=names[verb.__name__], model=model_name,
                              batch_size=batch_size, accelerator=accelerator,
                              devices=int(devices) if str(devices).isdigit() else devices, resume=resume,
                              overwrite=overwrite and not resume, catalogue=out,
                              **({"probe": probe_path} if probe_path else {}), **kwargs)
    if not _is_quiet(quiet):
        _say(f"{result['n_spectra']} spectra ({result['written']} shards run, "
             f"{result['skipped']} kept) -> {out}")


@main.command("classify")
@_predictor_options("classified")
@_corpus_options
@click.option("--full/--class-only", default=True, show_default=True,
              help="One catalogue row per spectrum (the default): class, probabilities, z, z_err, chi2, "
                   "deltachi2, template coefficients, stellar parameters with errors (stars), anomaly, "
                   "class_flag, z_flag, params_flag and flag; --class-only: the class columns.")
@click.option("--stellar-probe", "stellar_probe", default=None, type=_probe_path,
              help="With --full: stellar-parameter probe file (default: the bundled probe).")
@_templates_option
@click.option("--fast", is_flag=True,
              help="The class probe alone, without the template fit (class columns only; about ten times "
                   "faster, less sure).")
@_zbest_option
def classify_command(full, stellar_probe, templates, fast, zbest, **common) -> None:
    """Classify every spectrum in FILE_OR_DIR... as GALAXY, QSO or STAR.

    One catalogue row per spectrum: the class (the probe joined with the evidence of a
    template fit; the Redrock templates ship with the package), the template redshift, the
    stellar parameters of stars, the anomaly statistic and a flag per quantity (class_flag,
    z_flag, params_flag; flag is their OR, 0 means use the row; see the docs for the bits).
    --class-only: the class columns and class_flag; --fast: the probe alone (class only).
    Prints the table and/or writes it with -o (with provenance in its meta). Unreadable
    files and untokenizable spectra are reported with the reason and skipped; the command
    fails only when nothing was classified.
    """
    from .api import classify

    full = full and not fast
    if fast and templates:
        raise click.UsageError("--fast is the probe alone: not with --templates")
    if zbest and not full:
        raise click.UsageError("--zbest needs the full row (a redshift catalogue), not --class-only/--fast")
    _run_predictor(classify, "classified", full=full, stellar_probe=stellar_probe, templates=templates,
                   fast=fast, zbest=zbest, **common)


@main.command("predict-stellar")
@_predictor_options("predicted stellar parameters")
@_corpus_options
@click.option("--class-probe", "class_probe", default=None, type=_probe_path,
              help="Class probe file (default: the bundled probe).")
def predict_stellar_command(class_probe, **common) -> None:
    """Stellar parameters (teff in K, logg, fe_h, with 1-sigma errors) of every spectrum in FILE_OR_DIR...

    A probe on the embedding trained on stars: meaningful for stellar spectra only (flag
    NOT_STAR otherwise). Prints a table and/or writes it with -o; bad inputs are reported
    and skipped.
    """
    from .api import predict_stellar_parameters

    _run_predictor(predict_stellar_parameters, "predicted stellar parameters", class_probe=class_probe,
                   **common)


@main.command("predict-redshift")
@_predictor_options("predicted redshifts")
@_corpus_options
@_templates_option
@_zbest_option
def predict_redshift_command(templates, zbest, **common) -> None:
    """Redshift of every galaxy or quasar spectrum in FILE_OR_DIR...

    A full-range chi-square fit of the Redrock templates (--templates, else
    $OMNISPECTRA_TEMPLATES, else the compact ones bundled with omnispectra); the class probe
    (--probe) chooses the class. Prints a table (id, class, spectype, subtype, z, z_err,
    chi2, deltachi2, class_flag, z_flag, flag = z_flag) and/or writes it with -o (--zbest:
    with Redrock's column names); bad inputs are reported and skipped.
    """
    from .api import predict_redshift

    _run_predictor(predict_redshift, "predicted redshifts", templates=templates, zbest=zbest, **common)


@main.command("anomaly")
@_predictor_options("scored anomaly", probe=False)
def anomaly_command(**common) -> None:
    """Anomaly statistic of every spectrum in FILE_OR_DIR...: how badly the model
    reconstructs masked chunks, in units of the noise.

    Columns: anomaly (the ivar-weighted chi-square per pixel that the ANOMALY bit tests
    against the model card's threshold, omnispectra.anomaly_statistic), noise_estimated
    (no uncertainties in the file: the noise was estimated from the data) and flag.
    Prints a table and/or writes it with -o.
    """
    from .api import anomaly_score

    _run_predictor(anomaly_score, "scored anomaly", as_table=True, **common)


@main.command("embed-corpus")
@click.argument("corpus", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Folder for manifest.json and the embedding shards.")
@_model_option
@click.option("--shard-size", default=10_000, show_default=True, type=click.IntRange(min=1),
              help="Spectra per shard (the unit a killed run resumes from).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--precision", default="32-true", show_default=True,
              help="Lightning precision: 32-true, bf16-mixed or 16-mixed.")
@click.option("--accelerator", default="auto", show_default=True)
@click.option("--devices", default="auto", show_default=True, help="e.g. 'auto', 8 or '0,1'.")
@click.option("--num-workers", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--resume", is_flag=True, help="Continue a killed run: shards that exist are kept.")
@click.option("--overwrite", is_flag=True, help="Delete a previous run's shards and start again.")
@_quiet_option
def embed_corpus_command(corpus, output, model_name, shard_size, batch_size, precision, accelerator,
                         devices, num_workers, resume, overwrite, quiet) -> None:
    """Embed whole corpus files through Lightning's predict loop (many GPUs), in resumable shards.

    Needs the ``train`` extra. For a few files, ``omnispectra embed`` is simpler.
    """
    try:
        from .training.predict import embed_corpus
    except ImportError as err:
        raise CommandError(f"{err}; install the train extra: pip install 'omnispectra[train]'") from err

    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    result = embed_corpus(list(corpus), output, model=model_name, shard_size=shard_size,
                          batch_size=batch_size, precision=precision, accelerator=accelerator,
                          devices=devices, num_workers=num_workers, resume=resume, overwrite=overwrite,
                          progress=not _is_quiet(quiet))
    kept = result["skipped"] if isinstance(result["skipped"], int) else len(result["skipped"])
    click.echo(f"embedded {result['n_spectra']} spectra in {result['n_shards']} shards -> {result['output']}"
               + (f" ({kept} shards kept from the previous run)" if kept else ""))


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
@_device_option
@_overwrite_option
@click.option("--test-side", type=click.Choice(["any", "validation"]), default="any", show_default=True,
              help="validation: test halves hold only objects on the validation side of the "
                   "project's object-hash split (never pretrained on, never an engine donor).")
@click.option("--quiet", is_flag=True, help="No per-run progress lines.")
def evaluate_command(corpus, model_name, output, tasks, methods, runs, max_per_dataset, finetune,
                     baseline_pixels, device, overwrite, quiet, test_side) -> None:
    """Downstream evaluation (paper protocol) of an encoder on the labelled spectra of CORPUS...

    Source class, stellar parameters and redshift from the corpus labels; 50/50 splits
    grouped by object, RUNS seeds; probes, supervised baselines, PCA+ridge, kNN and a
    trivial baseline. Needs scikit-learn and matplotlib (the ``eval`` extra).
    """
    from .fileio import check_output
    from .training import require_lightning

    require_lightning("eval")  # MissingDependencyError names the extra; main() prints it
    try:
        from .evaluation.harness import evaluate
    except ImportError as err:  # pragma: no cover - scikit-learn missing
        raise CommandError(f'{err}; install the eval extra: pip install "omnispectra[eval]"') from err
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise CommandError(f"the output {out} is a file; give a folder")
    for inp in corpus:  # an input inside the folder is never replaced; earlier results need --overwrite
        check_output(out / "results.ecsv", [inp], overwrite=overwrite)
    say = None if _is_quiet(quiet) else (lambda msg: click.echo(msg, err=True))
    try:
        result = evaluate(list(corpus), model=model_name, output=output, tasks=tasks.split(","),
                          methods=methods.split(",") if methods else None, runs=runs,
                          max_per_dataset=max_per_dataset, finetune=finetune,
                          baseline_pixels=baseline_pixels, device=device, progress=say,
                          test_side=test_side)
    except ValueError as err:
        raise CommandError(str(err)) from err
    click.echo(result["report"])
    _say(f"wrote {output}/results.ecsv, results.md and plots ({result['seconds']:.0f} s)")


@main.command("simulate")
@click.argument("output", type=click.Path())
@click.option("-n", "--n-samples", default=1000, show_default=True, help="Engine spectra to write.")
@click.option("--templates", type=click.Path(exists=True, file_okay=False), default=None,
              help="Template folder (redrock/, pyhammer/); default $OMNISPECTRA_TEMPLATES.")
@click.option("--donors", "donors", multiple=True, required=True,
              help="Real spectrum files/folders lending grids and noise (training side only).")
@click.option("--seed", default=0, show_default=True, help="Sample seed (item i = rng(seed, 0, i)).")
@click.option("--split-fraction", default=0.2, show_default=True,
              help="Validation fraction of the object-hash split.")
@click.option("--split-seed", default=0, show_default=True, help="Seed of the object-hash split.")
@click.option("--pairs", is_flag=True,
              help="N objects, each observed through two donors (positive pairs of the invariance term).")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
def simulate_command(output, n_samples, templates, donors, seed, split_fraction, split_seed,
                     pairs, overwrite) -> None:
    """Write N labelled engine spectra (templates observed through real donors) into an HDF5 corpus."""
    from .engine import build_engine, write_engine_corpus
    from .exceptions import OmniSpectraError

    try:
        engine = build_engine(templates, list(donors), fraction=split_fraction, seed=split_seed)
        report = write_engine_corpus(engine, n_samples, output, seed=seed, overwrite=overwrite,
                                     pairs=pairs)
    except (OmniSpectraError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(report.summary())

# ---------------------------------------------------------------------------------------
# probe training (omnispectra.training.predictors)


@main.command("train-probe")
@click.argument("labels", type=click.Path(exists=True, dir_okay=False))
@click.argument("spectra", nargs=-1, type=_INPUT_PATHS)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The probe file (.safetensors; its card is written beside it as .json).")
@click.option("--embeddings", type=click.Path(exists=True, dir_okay=False), default=None,
              help="An `omnispectra embed` table to use instead of SPECTRA.")
@click.option("--id-column", default="id", show_default=True, help="Label-table column of the spectrum ids.")
@click.option("--label-column", "label_columns", multiple=True, required=True,
              help="Label column (repeat for several regression targets).")
@click.option("--group-column", default="object_id", show_default=True,
              help="Rows of one group share a cross-validation fold (e.g. the object id).")
@click.option("--kind", type=click.Choice(["classification", "regression"]), default=None,
              help="Default: classification for one non-numeric label column, else regression.")
@click.option("--recipes", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Candidate recipes (YAML, as configs/predictor_recipes.yaml); default one linear probe.")
@click.option("--recipe-set", default=None, help="The list of the recipe file to use (if it has several).")
@click.option("--steps", default=3000, show_default=True, type=click.IntRange(min=1),
              help="Steps of the default linear probe.")
@click.option("--lr", default=1e-3, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Learning rate of the default linear probe.")
@click.option("--folds", default=5, show_default=True, type=click.IntRange(min=3),
              help="K of the grouped K-fold.")
@click.option("--seed", default=0, show_default=True, help="Seed of the fold hash and of the training.")
@_model_option
@_overwrite_option
def train_probe_command(labels, spectra, output, embeddings, id_column, label_columns, group_column, kind,
                        recipes, recipe_set, steps, lr, folds, seed, model_name, overwrite) -> None:
    """Train a calibrated probe on your own LABELS (a table) for SPECTRA or --embeddings.

    Every candidate recipe is cross-validated over grouped folds, the best is calibrated
    (temperature, or sigma_scale for an ensemble) and refit on all rows; the probe file holds
    the calibration and the cross-validated scores (see docs/probes.rst).
    """
    from .training import require_lightning

    require_lightning()
    from .training.predictors import candidate_set, recipe_from_mapping, train_probe_from_files

    candidates = (candidate_set(recipes, recipe_set) if recipes else
                  [recipe_from_mapping({"name": f"linear, {steps} steps, lr {lr:g}", "head": "linear",
                                        "steps": steps, "lr": lr})])
    probe = train_probe_from_files(labels, output, candidates, label_columns, id_column, group_column,
                                   embeddings=embeddings, spectra=list(spectra),
                                   model=_load(model_name, "cpu"), kind=kind, folds=folds, seed=seed,
                                   overwrite=overwrite)
    cv = probe.info["cross_validation"]
    _say(f"wrote {output}: {probe.kind}, recipe {cv['selection']['chosen']!r}, {probe.info['n_train']} rows, "
         f"{cv['k']}-fold over {cv['n_groups']} groups")


@main.command("train-predictors")
@click.argument("weights")
@click.argument("corpus", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--recipes", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Candidate recipes (YAML): configs/predictor_recipes.yaml of the repository.")
@click.option("-o", "--output", default="omnispectra/data", show_default=True, help="Output folder.")
@click.option("--folds", default=5, show_default=True, type=click.IntRange(min=3))
@click.option("--seed", default=0, show_default=True)
@click.option("--tasks", default="source_class,stellar_params,redshift", show_default=True)
@click.option("--exclude-surveys", default="unknown", show_default=True,
              help="Comma-separated surveys never used.")
@click.option("--steps-scale", default=1.0, show_default=True, help="Factor on every recipe's steps.")
@click.option("--figures", default="benchmarks/results", show_default=True, help="Folder of the PNG figures.")
@click.option("--card", default=None,
              help="Encoder card to update (default <output>/omnispectra-default.json).")
@click.option("--no-anomaly", is_flag=True, help="Skip the anomaly threshold.")
@click.option("--cache", default=None,
              help="Folder caching embeddings, template fits and anomaly statistics.")
@click.option("--engine", "engine", multiple=True, help="Engine corpus file (repeatable).")
@click.option("--templates", default=None, help="Template folder: also ship the network + template class.")
@click.option("--engine-train", default=10000, show_default=True, help="Engine spectra for training.")
@click.option("--engine-holdout", default=5000, show_default=True, help="Engine spectra held out.")
@click.option("--baseline-pixels", default=2048, show_default=True, help="Pixels of the stellar baselines.")
@click.option("--groups", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Source-group file (configs/source_groups.csv): folds leave whole sources out.")
@click.option("--fold-probes", is_flag=True, help="Also write each round's class probe into OUTPUT/folds/.")
@click.option("--balance-groups", is_flag=True,
              help="With --groups and --templates: every source group weighs the same in the template "
                   "combination's fit.")
def train_predictors_command(weights, corpus, recipes, output, folds, seed, tasks, exclude_surveys,
                             steps_scale, figures, card, no_anomaly, cache, engine, templates, engine_train,
                             engine_holdout, baseline_pixels, groups, fold_probes, balance_groups) -> None:
    """Train, cross-validate and calibrate the predictors shipped with the package (WEIGHTS: the encoder)."""
    from .training import require_lightning

    require_lightning()
    from .training.predictors import PredictorOptions, train_predictors

    report = train_predictors(PredictorOptions(
        weights=weights, corpus=list(corpus), recipes=recipes, output=output, folds=folds, seed=seed,
        tasks=[t for t in tasks.split(",") if t],
        exclude_surveys=[s for s in exclude_surveys.split(",") if s],
        steps_scale=steps_scale, figures=figures or None, card=card, anomaly=not no_anomaly, cache=cache,
        engine=list(engine), templates=templates, engine_train=engine_train, engine_holdout=engine_holdout,
        baseline_pixels=baseline_pixels, groups=groups, fold_probes=fold_probes,
        balance_groups=balance_groups, command="omnispectra " + " ".join(sys.argv[1:])))
    _say(f"wrote {output}/predictors.json ({', '.join(report['predictors']) or 'no predictor'})")


if __name__ == "__main__":  # pragma: no cover
    main()
