"""High-level functions: spectra in, tokens/embeddings/tables out."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .exceptions import OmniSpectraError
from .tokenizer import tokenize

__all__ = ["token_summary"]


def token_summary(
    paths: Iterable[str | Path], format: str | None = None, preset: str | None = None
) -> tuple[list[str], list[tuple[str, str]]]:
    """Read spectrum files, tokenize every spectrum and describe each in one line.

    Parameters
    ----------
    paths : iterable of path-like
        Spectrum files or directories.
    format : str, optional
        Force a reader identifier instead of auto-detection.
    preset : str, optional
        Also embed each spectrum with a freshly initialized (untrained, seeded) encoder
        of this preset and report the embedding's shape.

    Returns
    -------
    rows : list of str
        A header line and one line per spectrum.
    failures : list of (path or id, reason)
        Files or spectra that could not be read or tokenized.
    """
    from . import io

    model = None
    if preset is not None:
        import torch

        from .collate import collate
        from .model import OmniSpectra, OmniSpectraConfig

        torch.manual_seed(0)
        model = OmniSpectra(OmniSpectraConfig.from_preset(preset)).eval()
    header = f"{'id':<44} {'survey':<11} {'pixels':>7} {'wavelength [A]':>17} {'tokens':>6} {'valid':>6}"
    if model is not None:
        header += f"  embedding ({preset}, untrained)"
    rows, failures = [header], []
    for path in paths:
        try:
            spectra = io.read(path, format=format)
        except OmniSpectraError as err:
            failures.append((str(path), str(err)))
            continue
        for spec in spectra:
            meta = spec.meta or {}
            sid = str(meta.get("id", Path(path).name))
            try:
                tok = tokenize(spec)
            except OmniSpectraError as err:
                failures.append((sid, str(err)))
                continue
            wave = spec.spectral_axis.to_value("Angstrom")
            line = (f"{sid[-44:]:<44} {str(meta.get('survey', '?')):<11} {tok.n_pixels:>7} "
                    f"{wave[0]:>8.1f}-{wave[-1]:<8.1f} {tok.n_tokens:>6} {int(tok.valid.sum()):>6}")
            if model is not None:
                with torch.no_grad():
                    batch = collate([tok])
                    emb = model.embed(batch.tokens, batch.wavelength, batch.valid)[0].numpy()
                line += f"  shape {emb.shape}, norm {np.linalg.norm(emb):.2f}"
            rows.append(line)
    return rows, failures
