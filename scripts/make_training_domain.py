#!/usr/bin/env python
"""Write the training domain (omnispectra/data/training-domain.npz) from the training spectra.

Usage::

    python scripts/make_training_domain.py ../shared/data -o omnispectra/data/training-domain.npz

The surveys are those the bundled class probe was trained on; the encoder and templates
are the bundled ones (see :mod:`omnispectra.training.domain`).

``--residual-into DOMAIN.npz`` measures only the fitted rows' anomaly threshold
(``residual_max``) and writes DOMAIN's other entries unchanged with it to ``-o``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="+", help="folders or files of the training spectra")
    parser.add_argument("-o", "--output", required=True, help="the domain file (.npz)")
    parser.add_argument("--fits-per-survey", type=int, default=60, help="labelled spectra fitted per survey")
    parser.add_argument("--report", default=None, help="also write the measures (JSON)")
    parser.add_argument("--residual-into", default=None, metavar="DOMAIN",
                        help="keep this domain file's entries and add only residual_max")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    from omnispectra.probes import resolve_probe
    from omnispectra.redshift import fitter_for
    from omnispectra.runtime import resolve_model
    from omnispectra.training.domain import build_domain

    support = resolve_probe(None, "source_class").info["wavelength_support"]["surveys"]
    if args.residual_into:
        return add_residual(args, set(support))
    encoder = resolve_model("default", "cpu")
    domain, report = build_domain(args.data, encoder, fitter_for(None), set(support),
                                  fits_per_survey=args.fits_per_survey)
    domain.save(args.output)
    sig = report["fits"]["significance"]
    summary = {"grids": domain.grids, "neighbour_threshold": domain.neighbour_threshold,
               "significance_min": domain.significance_min, "info": domain.info,
               "significance_by_label": {str(lab): np.nanpercentile(sig[report["fits"]["label"] == lab],
                                                                    [1, 5, 50]).tolist()
                                         for lab in np.unique(report["fits"]["label"])},
               "seconds": report["seconds"]}
    print(json.dumps(summary, indent=1))
    if args.report:
        with open(args.report, "w") as fh:
            json.dump(summary, fh, indent=1)
    return 0


def add_residual(args: argparse.Namespace, surveys: set[str]) -> int:
    """``--residual-into``: the given domain with the measured ``residual_max``, written to ``-o``."""
    from omnispectra.domain import load_domain
    from omnispectra.redshift import fitter_for
    from omnispectra.training.domain import (
        measure_fits,
        read_training_spectra,
        residual_provenance,
        residual_threshold,
    )

    if Path(args.output).resolve() == Path(args.residual_into).resolve():
        raise SystemExit("--residual-into and -o name the same file: write to another one and check it first")
    domain = load_domain(args.residual_into)
    fits = measure_fits(read_training_spectra(args.data, surveys), fitter_for(None), args.fits_per_survey)
    domain.residual_max = residual_threshold(fits)
    domain.info.update(residual_provenance(fits))
    domain.save(args.output)
    print(json.dumps({"residual_max": domain.residual_max, "info": domain.info}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
