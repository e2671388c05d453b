"""Compute the wavelength support of the bundled model from its training data; store it in the card.

The bundled model was trained on corpora built from the project's shared data folder
(the surveys listed in ``omnispectra/data/omnispectra-default.json``, ``training.settings.corpus``).
This script reads the same surveys' files again with the current readers, takes the
wavelength range of each spectrum's valid pixels (vacuum Angstrom), and writes per-survey
and overall minima/maxima into the card under ``wavelength_support``. The card is JSON next
to the weights; its ``sha256`` covers the weights file only, so editing the card keeps the
bundled digest check valid.

Usage::

    python scripts/wavelength_support.py ../shared/data --write
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

#: Folders added to the shared data after the bundled model was trained (not in its corpus).
ADDED_LATER = ("6dfgs", "lamost/dr1", "sdss/more", "vimos", "lijiang", "templates", "gaia_xp")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="the shared data folder (../shared/data)")
    parser.add_argument("--card", type=Path, default=None, help="model card (default: the bundled one)")
    parser.add_argument("--write", action="store_true", help="store the result in the card")
    args = parser.parse_args(argv)

    from omnispectra.inputs import iter_spectra
    from omnispectra.pretrained import bundled_weights_path
    from omnispectra.spectrum import spectrum_data

    card_path = args.card or bundled_weights_path().with_suffix(".json")
    card = json.loads(card_path.read_text())
    surveys = {Path(name).stem for name in card["training"]["settings"]["corpus"]}
    skip = {str((args.data / folder).resolve()) for folder in ADDED_LATER}
    sources = [p for p in sorted(args.data.rglob("*")) if p.is_file()
               and not any(str(p.resolve()).startswith(s + "/") for s in skip)]
    ranges: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    spectra = iter_spectra(sources, on_error="skip")
    for spec in spectra:
        source = str(spec.meta.get("source_file", ""))
        if any(source.startswith(s + "/") for s in skip):
            continue
        survey = str(spec.meta.get("survey", "unknown"))
        if survey not in surveys:
            continue
        data = spectrum_data(spec)
        good = data.wavelength[~data.bad]
        if good.size == 0:
            continue
        lo, hi = ranges.get(survey, [np.inf, -np.inf])
        ranges[survey] = [min(lo, float(good[0])), max(hi, float(good[-1]))]
        counts[survey] = counts.get(survey, 0) + 1
    overall = [min(r[0] for r in ranges.values()), max(r[1] for r in ranges.values())]
    support = {
        "unit": "Angstrom (vacuum), valid pixels",
        "overall": [round(overall[0], 2), round(overall[1], 2)],
        "surveys": {s: {"min": round(r[0], 2), "max": round(r[1], 2), "spectra": counts[s]}
                    for s, r in sorted(ranges.items())},
        "source": "scripts/wavelength_support.py over the training surveys' files in the shared data folder",
    }
    print(json.dumps(support, indent=2))
    print(spectra.summary(), file=sys.stderr)
    if args.write:
        card["wavelength_support"] = support
        card_path.write_text(json.dumps(card, indent=2) + "\n")
    return support


if __name__ == "__main__":
    main()
