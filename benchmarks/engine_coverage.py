"""Which classes the engine yields on every optical survey grid of ``../shared/data``.

For each survey and class (GALAXY, QSO, STAR), every real spectrum of that survey is
tried as a donor; a class counts as yielded on a donor when at least one template covers
the donor's valid span at an allowed redshift and is not sharper than the donor's line
spread (:meth:`omnispectra.engine.Engine.candidates`). One engine spectrum per survey and
class is drawn as an example. Writes a table (JSON: donors that yield the class / donors,
and for every refusal the donor, its valid span and the class templates' rest coverage)
and one figure, ``docs/_static/engine_coverage.png`` (a row per survey, a column per class).

No model is trained here, so donors of both sides of the split are used (this only
shows what the engine *can* produce on each grid)::

    OMP_NUM_THREADS=1 python benchmarks/engine_coverage.py --data ../shared/data \
        [--cache real.pkl]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from omnispectra.engine.generator import CLASSES, SIGMA_TOLERANCE, Engine
from omnispectra.templates.library import load_library

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_realism import load_real  # noqa: E402

NON_OPTICAL = ("apogee",)


def refusal(engine: Engine, spectype: str, donor) -> dict:
    """Why no template of ``spectype`` goes onto ``donor``: its valid span and line spread,
    and the rest coverage of the class's templates that are not sharper than it."""
    sharp_enough = [t for t in engine.library.by_class(spectype)
                    if t.line_width_ratio(donor.median_sigma_kms) <= SIGMA_TOLERANCE]
    lo, hi = donor.valid_wave[[0, -1]]
    out = {"class": spectype, "donor": donor.id, "valid_span": f"{lo:.0f}-{hi:.0f}",
           "sigma_kms": round(donor.median_sigma_kms, 1),
           "templates_not_sharper": len(sharp_enough)}
    if sharp_enough:
        out["bluest_rest_start"] = round(min(t.rest_range[0] for t in sharp_enough), 1)
        out["reddest_rest_end"] = round(max(t.rest_range[1] for t in sharp_enough), 1)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/engine_coverage.json"))
    ap.add_argument("--figure", type=Path, default=Path("docs/_static/engine_coverage.png"))
    args = ap.parse_args(argv)
    donors, _ = load_real(args.data, args.cache)
    by_survey = defaultdict(list)
    for d in donors:
        if d.survey not in NON_OPTICAL:
            by_survey[d.survey].append(d)
    library = load_library(args.data / "templates")
    table, examples = {}, {}
    qso_models = None  # the fits depend on the quasars and templates only: made once
    for survey, ds in sorted(by_survey.items()):
        eng = Engine(library, ds)
        if qso_models is None:
            eng.fit_quasars([d for d in donors if d.labels.get("class") == "QSO"])
            qso_models = eng.coefficient_models
        eng.coefficient_models = qso_models
        row, refused = {}, []
        for c in CLASSES:
            n_ok = 0
            for k, d in enumerate(ds):
                if eng.candidates(c, k):
                    n_ok += 1
                    if (survey, c) not in examples:
                        examples[(survey, c)] = eng.sample(np.random.default_rng(k), spectype=c,
                                                        donor_index=k)
                else:
                    refused.append(refusal(eng, c, d))
            row[c] = f"{n_ok}/{len(ds)}"
        spans = np.array([d.valid_wave[[0, -1]] for d in ds])
        table[survey] = row | {"valid_spans": f"{spans[:, 0].min():.0f}-{spans[:, 1].max():.0f}",
                               "sigma_kms": round(float(np.median([d.median_sigma_kms for d in ds])), 1)}
        if refused:
            table[survey]["refused"] = refused
    args.out.write_text(json.dumps(table, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    surveys = sorted(table)
    fig, axes = plt.subplots(len(surveys), 3, figsize=(9, 1.1 * len(surveys)), squeeze=False)
    for r, survey in enumerate(surveys):
        for col, c in enumerate(CLASSES):
            ax = axes[r, col]
            ax.tick_params(labelsize=5)
            s = examples.get((survey, c))
            if s is None:
                ax.text(0.5, 0.5, "no template covers this grid", ha="center", va="center", fontsize=6,
                        transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                ok = ~s.mask
                ax.plot(s.wave, np.where(ok, s.flux, np.nan), lw=0.3)
                lo, hi = np.percentile(s.flux[ok], [1, 99])
                ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.2 * (hi - lo))
                sub = s.labels.get("subclass") or ""
                ax.set_title(f"{survey} {c} {sub} z={s.labels['z']:.3f}", fontsize=6)
    fig.tight_layout(pad=0.3)
    fig.savefig(args.figure, dpi=40)
    plt.close(fig)
    print(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
