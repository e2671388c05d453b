"""Retrieval with the embedding itself: precision@k of cosine nearest neighbours (issue 27).

What a user does with :func:`omnispectra.embed` - similarity search - measured directly:
every *validation* spectrum (:func:`omnispectra.splits.is_validation`, the project's
object-hash split) is a query; its ``k`` (10) nearest neighbours by cosine similarity are
looked up in the *training* side of the same group (one survey, or ``all`` surveys
pooled, as the harness groups them). A candidate is never the query's own object
(:func:`~omnispectra.splits.canonical_object_id`), nor a spectrum from the same file or
the same plate (:func:`exposure_key`): those share sky, calibration and fibre-to-fibre
systematics, and a neighbour found through them says nothing about the physics.

Precision@k is the fraction of the ``k`` neighbours that are *relevant*, averaged over
queries, for three questions (each searched among the training spectra labelled for it,
with the harness's label rules, :func:`~omnispectra.evaluation.harness.labeled_rows`):

``class``
    the neighbour has the query's GALAXY / QSO / STAR class; reported per class and as
    the mean over classes (``mean``, the issue's figure of merit);
``redshift_bin``
    GALAXY / QSO with a redshift: the neighbour's ``z`` falls in the query's bin of
    :data:`REDSHIFT_BIN_EDGES`;
``teff``
    stars with a Teff: the neighbour's Teff is within :data:`TEFF_TOLERANCE` (10%) of
    the query's.

The same queries and candidates are scored with the baseline the harness uses for its
supervised comparisons: flux resampled onto one log-wavelength grid per group
(:func:`~omnispectra.evaluation.baselines.resample_group`), standardized and reduced by a
PCA (<= 32 components) fitted on the group's training side
(:func:`~omnispectra.evaluation.baselines.pca_features`), cosine in PCA space.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.stream import ENGINE_SURVEY_PREFIX, is_engine_survey
from ..exceptions import OmniSpectraError
from ..splits import DEFAULT_SEED, DEFAULT_VALIDATION_FRACTION, canonical_object_id, is_validation

__all__ = ["K", "REDSHIFT_BIN_EDGES", "TEFF_TOLERANCE", "RETRIEVAL_TASKS", "RetrievalTask", "redshift_bin",
           "exposure_key", "nearest_neighbours", "chance_precision", "precision_at_k", "retrieval_scores",
           "evaluate_retrieval", "retrieval_report"]

logger = logging.getLogger(__name__)

#: Neighbours per query.
K = 10
#: Redshift bin edges. Each marks where a strong feature enters or leaves a ~3,800-9,200 A
#: optical window, so spectra in one bin show the same lines: z < 0.1 local (H-alpha at
#: the red end of 6dFGS/SDSS), H-alpha leaves at z ~ 0.37, H-beta/[OIII] at z ~ 0.8, only
#: MgII/[OII] remain to z ~ 1.5, CIV enters near z ~ 1.5 and Lyman-alpha with its forest at
#: z ~ 2.1. A bin is therefore what a spectrum can tell about its redshift by eye.
REDSHIFT_BIN_EDGES = (0.1, 0.37, 0.8, 1.5, 2.1)
#: A Teff neighbour is relevant within this relative difference.
TEFF_TOLERANCE = 0.10

_PLATE_PATTERNS = (
    # SDSS / BOSS / eBOSS / SEGUE: spec-PLATE-MJD-FIBER.fits (an engine donor id drops .fits)
    (re.compile(r"^spec-(\d{4,5})-(\d{5})-\d+(?:\.fits|$)", re.I), "sdss-plate:{0}"),
    # LAMOST: spec-MJD-PLANID_spSPID-FIBER.fits[.gz]
    (re.compile(r"^spec-(\d{5})-([^_]+)_sp(\d+)-\d+(?:\.fits|$)", re.I), "lamost-plan:{0}-{1}"),
)
#: Engine spectra name their noise donor in ``source_file`` (``engine:<template>|donor:<id>``).
_DONOR_TAG = "|donor:"


@dataclass(frozen=True)
class RetrievalTask:
    """A retrieval question: which rows take part and when a neighbour is relevant.

    ``rows(meta)`` -> boolean mask of usable rows; ``values(meta)`` -> per-row value;
    ``match(query_values (n, 1), neighbour_values (n, k))`` -> relevance ``(n, k)``;
    ``per_label``: also report precision per query value (the classes).
    """

    name: str
    rows: Callable[[dict[str, np.ndarray]], np.ndarray]
    values: Callable[[dict[str, np.ndarray]], np.ndarray]
    match: Callable[[np.ndarray, np.ndarray], np.ndarray]
    per_label: bool = False


def redshift_bin(z: Sequence[float] | np.ndarray) -> np.ndarray:
    """Bin of each redshift in :data:`REDSHIFT_BIN_EDGES` (0 .. 5); -1 where ``z`` is not finite.

    Negative redshifts (blueshifted nearby objects) fall in the first bin.
    """
    z = np.asarray(z, dtype=np.float64)
    out = np.searchsorted(np.asarray(REDSHIFT_BIN_EDGES), z, side="right").astype(np.int64)
    out[~np.isfinite(z)] = -1
    return out


def exposure_key(source_file: str) -> str:
    """The plate (SDSS family, LAMOST plan) a spectrum was observed on, else its file.

    Spectra sharing this key share sky subtraction and calibration; retrieval never
    counts one as a neighbour of another. An engine spectrum (``engine:...|donor:<id>``)
    carries its donor's noise, mask and calibration, so it has its donor's key.
    """
    text = str(source_file)
    if _DONOR_TAG in text:
        text = text.split(_DONOR_TAG, 1)[1]
    name = Path(text).name
    for pattern, form in _PLATE_PATTERNS:
        m = pattern.match(name)
        if m:
            return form.format(*m.groups())
    return f"file:{source_file}"


def _codes(query: np.ndarray, gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of string keys over both sets ('' never equals anything)."""
    both = np.concatenate([np.asarray(query, dtype=str), np.asarray(gallery, dtype=str)])
    _, inverse = np.unique(both, return_inverse=True)
    inverse = inverse.astype(np.int64)
    inverse[both == ""] = -1 - np.arange(int((both == "").sum()))  # each missing key its own
    return inverse[: len(query)], inverse[len(query):]


def _blocked(codes: list[tuple[np.ndarray, np.ndarray]], start: int, n: int, n_gallery: int) -> np.ndarray:
    """``(n, n_gallery)``: candidates sharing a key with queries ``start .. start + n``."""
    blocked = np.zeros((n, n_gallery), dtype=bool)
    for qc, gc in codes:
        blocked = blocked | (qc[start:start + n, None] == gc[None, :])
    return blocked


def chance_precision(query_values: np.ndarray, gallery_values: np.ndarray,
                     match: Callable[[np.ndarray, np.ndarray], np.ndarray],
                     exclude: Sequence[tuple[np.ndarray, np.ndarray]] = (), chunk: int = 1024) -> np.ndarray:
    """Per query: the precision of neighbours drawn at random from its allowed candidates.

    The floor any vector must beat (e.g. 1.0 for a class when every candidate shares it);
    NaN where no candidate is allowed. ``match`` and ``exclude`` as in
    :class:`RetrievalTask` and :func:`nearest_neighbours`.
    """
    codes = [_codes(qk, gk) for qk, gk in exclude]
    qv, gv = np.asarray(query_values), np.asarray(gallery_values)
    out = np.full(len(qv), np.nan)
    for start in range(0, len(qv), chunk):
        allowed = ~_blocked(codes, start, len(qv[start:start + chunk]), len(gv))
        hits = (np.asarray(match(qv[start:start + chunk, None], gv[None, :]), dtype=bool) & allowed).sum(1)
        n = allowed.sum(1)
        out[start:start + len(n)] = np.where(n > 0, hits / np.maximum(n, 1), np.nan)
    return out


def nearest_neighbours(query: np.ndarray, gallery: np.ndarray, k: int = K,
                       exclude: Sequence[tuple[np.ndarray, np.ndarray]] = (),
                       chunk: int = 1024) -> np.ndarray:
    """Indices into ``gallery`` of the ``k`` most cosine-similar rows of each query.

    Parameters
    ----------
    query, gallery : arrays (n_q, d), (n_g, d)
        Vectors; a zero vector has similarity 0 with everything.
    k : int
        Neighbours per query.
    exclude : sequence of (query_keys, gallery_keys)
        String keys per row; a gallery row sharing any key with the query is never a
        neighbour (object id, plate, file). An empty key matches nothing.
    chunk : int
        Queries per similarity block (memory).

    Returns
    -------
    ndarray of int64, shape (n_q, k)
        Most similar first; -1 where fewer than ``k`` candidates remain.

    Raises
    ------
    ValueError
        ``k < 1``, or the vectors have different dimensions.
    """
    query, gallery = np.asarray(query, dtype=np.float64), np.asarray(gallery, dtype=np.float64)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query {query.shape} and gallery {gallery.shape} must be 2-D with one width")
    q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-30)
    g = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-30)
    codes = [_codes(qk, gk) for qk, gk in exclude]
    out = np.full((len(q), k), -1, dtype=np.int64)
    kk = min(k, len(g))
    for start in range(0, len(q), chunk):
        sim = q[start:start + chunk] @ g.T
        sim[_blocked(codes, start, len(sim), len(g))] = -np.inf
        if kk == 0:
            continue
        top = np.argsort(-sim, axis=1, kind="stable")[:, :kk]
        ok = np.isfinite(np.take_along_axis(sim, top, axis=1))
        out[start:start + len(sim), :kk] = np.where(ok, top, -1)
    return out


def precision_at_k(neighbours: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Per query: relevant neighbours over found neighbours (NaN where none was found).

    ``neighbours`` as :func:`nearest_neighbours` returns them; ``relevant`` a boolean
    array of the same shape (ignored where the neighbour is -1).
    """
    found = neighbours >= 0
    n = found.sum(axis=1)
    hits = (np.asarray(relevant, dtype=bool) & found).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, hits / np.maximum(n, 1), np.nan)


def _teff_match(q: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.abs(n - q) <= TEFF_TOLERANCE * np.abs(q)


def _task_rows(name: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    def rows(meta: dict[str, np.ndarray]) -> np.ndarray:
        from .harness import TASKS, labeled_rows

        task = {"class": "source_class", "redshift_bin": "redshift"}.get(name)
        if task is not None:
            return labeled_rows(TASKS[task], meta)
        teff = np.asarray(meta["teff"], dtype=np.float64)
        return (meta["source_class"] == "STAR") & np.isfinite(teff) & (np.nan_to_num(teff) > 0)
    return rows


#: The three retrieval questions of the module docstring.
RETRIEVAL_TASKS: dict[str, RetrievalTask] = {
    "class": RetrievalTask("class", _task_rows("class"), lambda m: np.asarray(m["source_class"], dtype=str),
                           lambda q, n: q == n, per_label=True),
    "redshift_bin": RetrievalTask("redshift_bin", _task_rows("redshift_bin"),
                                  lambda m: redshift_bin(m["z"]), lambda q, n: q == n),
    "teff": RetrievalTask("teff", _task_rows("teff"), lambda m: np.asarray(m["teff"], dtype=np.float64),
                          _teff_match),
}


def retrieval_scores(vectors: np.ndarray, meta: dict[str, np.ndarray], validation: np.ndarray, k: int = K,
                     tasks: Sequence[str] = tuple(RETRIEVAL_TASKS)) -> list[dict[str, Any]]:
    """Precision@k of one group of spectra: validation rows query the training rows.

    Parameters
    ----------
    vectors : array (n, d)
        One vector per row (embeddings, PCA features ...).
    meta : dict of arrays (n,)
        ``object_id``, ``source_file``, ``source_class``, ``z``, ``teff`` per row.
    validation : bool array (n,)
        Query rows; the others are the candidates.
    k : int
        Neighbours per query.
    tasks : sequence of str
        Keys of :data:`RETRIEVAL_TASKS`.

    Returns
    -------
    list of dict
        ``task``, ``label`` (a class, ``all`` = mean over queries, ``mean`` = mean over
        classes), ``precision``, ``chance`` (:func:`chance_precision` averaged over the
        same queries), ``n_queries``, ``n_candidates``; tasks without a query or a
        candidate are left out.
    """
    vectors = np.asarray(vectors)
    validation = np.asarray(validation, dtype=bool)
    if len(vectors) != len(validation):
        raise ValueError(f"{len(vectors)} vectors but {len(validation)} validation flags")
    objects = np.array([canonical_object_id(o) for o in meta["object_id"]], dtype=str)
    plates = np.array([exposure_key(s) if s else "" for s in meta["source_file"]], dtype=str)
    out: list[dict[str, Any]] = []
    for name in tasks:
        task = RETRIEVAL_TASKS[name]
        usable = np.asarray(task.rows(meta), dtype=bool)
        qi, gi = np.flatnonzero(usable & validation), np.flatnonzero(usable & ~validation)
        if not qi.size or not gi.size:
            continue
        exclude = [(objects[qi], objects[gi]), (plates[qi], plates[gi])]
        neigh = nearest_neighbours(vectors[qi], vectors[gi], k, exclude=exclude)
        values = task.values(meta)
        qv = values[qi]
        p = precision_at_k(neigh, task.match(qv[:, None], values[gi][np.clip(neigh, 0, None)]))
        chance = chance_precision(qv, values[gi], task.match, exclude)
        labels = [("all", np.isfinite(p))]
        if task.per_label:
            labels += [(str(lab), (qv == lab) & np.isfinite(p)) for lab in sorted(set(qv.tolist()))]
        per = []
        for label, sel in labels:
            if not sel.any():
                continue
            row = {"task": name, "label": label, "precision": float(p[sel].mean()),
                   "chance": float(np.nanmean(chance[sel])), "n_queries": int(sel.sum()),
                   "n_candidates": int(gi.size)}
            out.append(row)
            per += [row] if label != "all" else []
        if per:
            out.append({**per[0], "label": "mean", "precision": float(np.mean([r["precision"] for r in per])),
                        "chance": float(np.mean([r["chance"] for r in per])),
                        "n_queries": int(sum(r["n_queries"] for r in per))})
    return out


def _group_vectors(data: Any, grows: np.ndarray, validation: np.ndarray, baseline_pixels: int) -> np.ndarray:
    """PCA features of the group's resampled flux, the PCA fitted on its training rows."""
    from .baselines import pca_features, resample_group

    x, _ = resample_group(data.arrays(grows), max_pixels=baseline_pixels)
    train = ~validation
    if train.sum() < 2:
        return np.zeros((len(grows), 1))
    fit, rest = pca_features(x[train], x[~train])
    features = np.zeros((len(grows), fit.shape[1]))
    features[train], features[~train] = fit, rest
    return features


def evaluate_retrieval(corpus: Any, model: Any = "default", k: int = K, max_per_dataset: int = 20_000,
                       min_queries: int = 5, baseline_pixels: int = 2048,
                       fraction: float = DEFAULT_VALIDATION_FRACTION, seed: int = DEFAULT_SEED,
                       batch_size: int = 32, device: str | None = None,
                       progress: Callable[[str], None] | None = None,
                       reference: Any = None) -> dict[str, Any]:
    """Precision@k of the encoder's embeddings and of PCA neighbours, per survey and pooled.

    Parameters
    ----------
    corpus : path, glob or sequence
        Labelled corpus files (as :func:`omnispectra.evaluation.harness.evaluate`).
    model : str, path or OmniSpectra
        The encoder (as :func:`omnispectra.api.embed`).
    k : int
        Neighbours per query (10).
    max_per_dataset : int
        Labelled spectra kept per survey (the harness's fixed random subset).
    min_queries : int
        Rows with fewer queries are left out of the report (kept in the table).
    baseline_pixels : int
        Cap on the resampled length of the PCA baseline's grid.
    fraction, seed : float, int
        The object-hash split (:func:`omnispectra.splits.is_validation`).
    reference : path, glob or sequence, optional
        Engine corpora (surveys ``engine_<survey>``, e.g. ``omnispectra simulate``) whose
        labelled spectra join the candidates - never the queries - of their donor survey's
        group and of ``all``: neighbours among simulations of known class, redshift and
        Teff. Engine spectra in ``corpus`` count the same way. Their donors must be
        training-side spectra (as the engine takes them); an engine spectrum shares its
        donor's plate key (:func:`exposure_key`).

    Returns
    -------
    dict
        ``table`` (astropy Table: group, method, task, label, precision, chance,
        n_queries, n_candidates), ``report`` (markdown), ``n_spectra``, ``encoder`` (its info).

    Raises
    ------
    OmniSpectraError
        The corpus holds no labelled validation spectrum to query with.
    """
    from astropy.table import Table

    from ..corpus import corpus_files
    from ..runtime import resolve_model
    from .harness import TASKS, compute_embeddings, load_labeled

    say = progress or logger.info
    sources = corpus_files(corpus) + (corpus_files(reference) if reference is not None else [])
    data = load_labeled(sources, list(TASKS.values()), max_per_dataset=max_per_dataset)
    surveys = np.asarray(data.meta["survey"], dtype=str)
    engine = np.array([is_engine_survey(s) for s in surveys], dtype=bool)
    validation = is_validation(data.meta["object_id"], fraction, seed) & ~engine
    if not validation.any() or validation.all():
        raise OmniSpectraError(f"retrieval needs labelled spectra on both sides of the split: "
                               f"{int(validation.sum())} of {len(data)} are validation spectra")
    encoder = resolve_model(model, device)
    embeddings = compute_embeddings(data, encoder, batch_size=batch_size)
    say(f"embedded {len(data)} labelled spectra ({int(validation.sum())} queries)")
    # engine spectra join the group of the survey whose donors they were observed through
    group_of = np.array([s.removeprefix(ENGINE_SURVEY_PREFIX) for s in surveys.tolist()], dtype=str)
    groups = {s: np.flatnonzero(group_of == s) for s in sorted(set(group_of[~engine].tolist()))}
    groups["all"] = np.arange(len(data))
    rows = []
    for gname, grows in groups.items():
        meta = {key: value[grows] for key, value in data.meta.items()}
        val = validation[grows]
        vectors = {"omnispectra": embeddings[grows], "pca": _group_vectors(data, grows, val, baseline_pixels)}
        for method, vec in vectors.items():
            for r in retrieval_scores(vec, meta, val, k):
                rows.append({"group": gname, "method": method, **r})
        say(f"{gname}: {int(val.sum())} queries, {int((~val).sum())} candidates")
    names = ["group", "method", "task", "label", "precision", "chance", "n_queries", "n_candidates"]
    table = Table(rows=[[r[n] for n in names] for r in rows], names=names) if rows else Table(names=names)
    table.meta.update({"k": k, "split_fraction": fraction, "split_seed": seed,
                       "n_reference": int(engine.sum()),
                       "encoder": {a: b for a, b in getattr(encoder, "info", {}).items()
                                   if isinstance(b, (str, int, float))}})
    return {"table": table, "report": retrieval_report(table, k, min_queries), "n_spectra": len(data),
            "n_reference": int(engine.sum()), "encoder": table.meta["encoder"]}


_COLUMNS = (("class", "GALAXY"), ("class", "QSO"), ("class", "STAR"), ("class", "mean"),
            ("redshift_bin", "all"), ("teff", "all"))
_METHOD_LABELS = {"omnispectra": "OmniSpectra embedding", "pca": "PCA of resampled flux",
                  "chance": "random candidates (chance)"}


def retrieval_report(table: Any, k: int = K, min_queries: int = 5) -> str:
    """Markdown: precision@k per group (surveys, then ``all``) and method, then the query counts.

    A group where no cell has ``min_queries`` queries is left out; a cell with fewer
    queries shows their number in brackets. ``class mean`` is the mean over the query
    classes present; ``chance`` the precision of random allowed candidates.
    """
    lines = [f"Precision@{k} of cosine nearest neighbours: validation spectra query the training side "
             "of their group (one survey, or `all` pooled); the same object, file or plate never counts; "
             "(n): a cell of only n queries.",
             "", "| Survey | Vectors | " + " | ".join(
                 f"class {label}" if task == "class" else {"redshift_bin": "z bin", "teff": "Teff ±10%"}[task]
                 for task, label in _COLUMNS) + " |", "|---|---|" + "---|" * len(_COLUMNS)]
    cell = {(r["group"], r["method"], r["task"], r["label"]): (float(r["precision"]), int(r["n_queries"]))
            for r in table}
    for r in table[table["method"] == "omnispectra"] if len(table) else []:
        cell[(r["group"], "chance", r["task"], r["label"])] = (float(r["chance"]), int(r["n_queries"]))
    groups = sorted({str(g) for g in table["group"]} - {"all"}) + (["all"] if len(table) else [])
    shown = []
    for g in groups:
        values = {m: [cell.get((g, m, t, lab), (np.nan, 0)) for t, lab in _COLUMNS] for m in _METHOD_LABELS}
        if all(n < min_queries for v in values.values() for _, n in v):
            continue
        shown.append(g)
        for m, v in values.items():
            text = [("-" if not n or not np.isfinite(p)
                     else f"{p:.3f}" + (f" ({n})" if n < min_queries else "")) for p, n in v]
            lines.append(f"| {g} | {_METHOD_LABELS[m]} | " + " | ".join(text) + " |")
    lines += ["", "Queries / candidates per group and question:", "",
              "| Survey | class | z bin | Teff |", "|---|---|---|---|"]
    counts = {(r["group"], r["task"]): f"{r['n_queries']} / {r['n_candidates']}" for r in table
              if r["method"] == "omnispectra" and r["label"] == "all"}
    for g in shown:
        lines.append(f"| {g} | " + " | ".join(counts.get((g, t), "-") for t in RETRIEVAL_TASKS) + " |")
    return "\n".join(lines) + "\n"
