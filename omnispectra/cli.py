"""The ``omnispectra`` command line: a thin click layer over the Python API."""

from __future__ import annotations

import platform

import click

from . import __version__


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


@main.command("tokenize")
@click.argument("inputs", nargs=-1, type=click.Path(exists=True, dir_okay=True))
@click.option("--examples", is_flag=True, help="Use the real example spectra shipped with the package.")
@click.option("--format", "fmt", default=None, help="Force a reader (see `omnispectra.io.list_formats()`).")
@click.option("--preset", default=None, type=click.Choice(["tiny", "small", "paper"]),
              help="Also run an (untrained) encoder of this preset and report the embedding shape.")
def tokenize_command(inputs: tuple[str, ...], examples: bool, fmt: str | None, preset: str | None) -> None:
    """Read spectra, cut them into tokens and summarize them (one line per spectrum)."""
    from .api import token_summary

    paths = list(inputs)
    if examples:
        from .examples import example_paths

        paths += [str(p) for p in example_paths()]
    if not paths:
        raise click.UsageError("give spectrum files or directories, or --examples")
    rows, failures = token_summary(paths, format=fmt, preset=preset)
    for line in rows:
        click.echo(line)
    for path, reason in failures:
        click.echo(f"skipped {path}: {reason}", err=True)
    if len(rows) <= 1:  # header only
        raise SystemExit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
