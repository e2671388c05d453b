"""The columns of a catalogue row and the flags of each quantity.

One pass over the inputs (:class:`ProbeRun`) gives the embeddings, the anomaly statistic
and each input's arrays; the functions here turn them, the probes' outputs and the
template fits into columns, and gather the bits of :mod:`omnispectra.flags` into one
flag per quantity: ``class_flag``, ``z_flag`` and ``params_flag`` (each restricted to
its bits, :data:`~omnispectra.flags.CLASS_BITS` ...), so that a star's class is never
flagged for its stellar parameters and a good redshift is never flagged for a faint
continuum. The rules that set each bit live in :mod:`omnispectra.flags` and
:mod:`omnispectra.domain`; this module only measures and calls them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import domain as domains
from ..exceptions import NonFiniteOutputError
from ..flags import (
    ANOMALY_FAR_FACTOR,
    ANOMALY_STATISTIC,
    CLASS_BITS,
    FIT_ANOMALY_STATISTIC,
    FLAG_DESCRIPTION,
    PARAMS_BITS,
    Z_BITS,
    Flag,
    anomaly_flags,
    class_disagreement_flags,
    finite_flags,
    impossible_values,
    label_range_flags,
    probe_support_flags,
    range_flags,
    redshift_class_flags,
)
from ..results import FIT_ANOMALY_DESCRIPTION, NOISE_ESTIMATED_DESCRIPTION
from .anomaly import ANOMALY_DESCRIPTION, anomaly_threshold, noise_estimated, quality_flags
from .inputs import InputItem
from .pipeline import Pass, RunOptions, forward, item_table, result_meta
from .scoring import ANOMALY_N_MASKS, Masks

logger = logging.getLogger(__name__)

__all__ = ["ProbeRun", "embed_for_probes", "class_columns", "add_class_columns", "stellar_columns",
           "StellarColumns", "windowed", "LIBRARY_GRID", "add_stellar_columns", "classes_with_templates",
           "redshift_columns", "add_redshift_columns",
           "poor_fit_flags", "add_flag_columns", "add_anomaly_column", "FLAG_COLUMNS"]

#: The flag columns of a row, what each says, and the bits it may hold.
FLAG_COLUMNS = {
    "class_flag": ("warning bits of the class (omnispectra.flags.Flag); 0 means use it", CLASS_BITS),
    "z_flag": ("warning bits of the redshift (omnispectra.flags.Flag; Redrock's ZWARN); 0 means use it",
               Z_BITS),
    "params_flag": ("warning bits of the stellar parameters (omnispectra.flags.Flag); 0 means use them",
                    PARAMS_BITS),
}


@dataclass
class ProbeRun:
    """Embeddings (and anomaly statistics) of the inputs that survived, with their table columns.

    The anomaly statistic is the masked reconstruction's (:func:`embed_for_probes`), or,
    once the rows have template fits, the fits' residual chi-square (:meth:`use_fit_anomaly`).
    """

    net: Any
    done: Pass
    threshold: float | None
    anomaly: np.ndarray | None   # (N,) statistic, None when not computed
    from_fit: bool = False       # the statistic is the template fits' (not the masked passes')

    @property
    def items(self) -> list[InputItem]:
        """The inputs of the rows, in order."""
        return self.done.items

    def keep(self, ok: np.ndarray, what: str) -> None:
        """Reject the rows where ``ok`` is False (their ``what`` is not finite)."""
        inputs = self.done.inputs
        for item in (item for item, good in zip(self.items, ok, strict=True) if not good):
            inputs.reject(item, NonFiniteOutputError(f"spectrum {item.id!r}: the {what} is not finite"))
        if inputs.single and (not ok.all() or not self.items):
            raise inputs.skipped[-1].error
        d = self.done
        items = [item for item, good in zip(d.items, ok, strict=True) if good]
        self.done = Pass(d.vectors[ok], d.mse[ok], d.chi2[ok], items, d.inputs, d.torch_dtype)
        if self.anomaly is not None:
            self.anomaly = self.anomaly[ok]

    def use_fit_anomaly(self, fits: list[Any], classes: list[str]) -> None:
        """Make the rows' template fits the anomaly statistic: each best solution's
        :attr:`~omnispectra.redshift.RedshiftResult.residual_chi2` against the training
        domain's 99th percentile (none without a bundled domain, or one that predates it).
        It detects more corrupted spectra than the masked passes (``benchmarks/anomaly_power.py``)
        and costs no forward pass. NaN (no ``ANOMALY``) where the templates of the row's
        class could not fit it (an infrared star): the fit says nothing of such a spectrum."""
        domain = domains.training_domain()
        self.anomaly = np.asarray([fit.residual_for(cls) for fit, cls in zip(fits, classes, strict=True)],
                                  dtype=np.float64)
        self.threshold = None if domain is None else domain.residual_max
        self.from_fit = True

    def input_flags(self, far_anomaly_only: bool = False) -> np.ndarray:
        """The input checks and ``ANOMALY`` of every row (with ``far_anomaly_only``, only an
        anomaly :data:`~omnispectra.flags.ANOMALY_FAR_FACTOR` times above its threshold)."""
        out = quality_flags(self.items)
        if self.anomaly is not None:
            factor = ANOMALY_FAR_FACTOR if far_anomaly_only else 1.0
            out |= anomaly_flags(self.anomaly, self.threshold, factor)
        return out

    def domain_flags(self) -> np.ndarray:
        """``OUT_OF_DOMAIN`` where the input's shape or embedding lies outside the stored
        training domain (:mod:`omnispectra.domain`): only for the encoder the domain was
        measured with (nothing for another encoder, or when no domain is bundled)."""
        from ..probes import encoder_fingerprint

        domain = domains.training_domain()
        if (domain is None or not self.items
                or domain.info.get("encoder_sha") != encoder_fingerprint(self.net)):
            return np.zeros(len(self.items), dtype=np.int64)
        shapes = [None if item.data is None else domains.shape_of(item.data) for item in self.items]
        return domain.shape_flags(shapes) | domain.embedding_flags(self.done.vectors)

    def table(self, head: Any):
        """``id``, ``source_file``, ``survey`` and the provenance (``head``'s probe) in ``meta``."""
        table = item_table(self.items)
        table.meta.update(result_meta(self.net, self.done.inputs, self.done.torch_dtype, probe=head,
                                      kind="predictions"))
        table.meta["ANOMP99"] = float("nan") if self.threshold is None else self.threshold
        if self.anomaly is not None:
            table.meta["ANOMSTAT"] = FIT_ANOMALY_STATISTIC if self.from_fit else ANOMALY_STATISTIC
        domain = domains.training_domain()
        if domain is not None:
            table.meta["DOMAIN"] = str(domain.info.get("encoder_sha", ""))[:16]
        return table


def embed_for_probes(spectra: Any, net: Any, options: RunOptions, masked_anomaly: bool = True) -> ProbeRun:
    """Embed measured inputs, with the masked anomaly statistic when the model has a threshold.

    ``masked_anomaly=False`` skips the masked passes (most of a row's forward cost): for rows
    that get template fits, whose residuals give the statistic (:meth:`ProbeRun.use_fit_anomaly`).
    """
    threshold = anomaly_threshold(net) if masked_anomaly else None
    masks = Masks(ANOMALY_N_MASKS) if threshold is not None else None
    done = forward(spectra, net, options, masks=masks, measure=True)
    run = ProbeRun(net, done, threshold, done.chi2 if masks is not None else None)
    if done.inputs.single and not done.items:
        raise done.inputs.skipped[-1].error
    return run


def class_columns(head: Any, run: ProbeRun) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(classes, calibrated probabilities (N, K), DISAGREEMENT flags)``; rows with a
    non-finite probability are rejected first (never a class from NaN)."""
    vectors = run.done.vectors
    prob = np.asarray(head.predict(vectors)) if len(vectors) else np.zeros((0, len(head.names)))
    ok = np.all(np.isfinite(prob), axis=1)
    if not ok.all():
        run.keep(ok, "source class probe's output")
        prob, vectors = prob[ok], vectors[ok]
    classes = [head.names[k] for k in np.argmax(prob, axis=1)] if len(prob) else []
    disagree = None
    if getattr(head, "members", 1) > 1 and len(vectors):
        disagree = class_disagreement_flags(head.probabilities(head.member_outputs(vectors)))
    return classes, prob, (np.zeros(len(prob), np.int64) if disagree is None else disagree)


def add_class_columns(table: Any, names: list[str], classes: list[str], prob: np.ndarray,
                      description: str = "source class (largest calibrated probability)") -> None:
    """``class`` and one ``prob_<CLASS>`` column per class."""
    table["class"] = np.asarray(classes, dtype=str) if classes else np.zeros(0, dtype="U6")
    table["class"].description = description
    for k, name in enumerate(names):
        table[f"prob_{name}"] = prob[:, k].astype(np.float32)
        table[f"prob_{name}"].description = f"calibrated probability that the source is a {name}"


#: The library's own grid in a survey probe's ``support_by_grid``: a spectrum on it keeps the
#: library probe, trained on the library alone and more accurate there.
LIBRARY_GRID = "miles"


@dataclass
class StellarColumns:
    """Stellar parameters of a run's rows: ``values`` and 1-sigma ``errors`` (N, k) float32,
    ``flags`` (N,) and ``route`` (N,): which probe answered each row (``"library"`` or
    ``"survey"``, :func:`stellar_columns`)."""

    values: np.ndarray
    errors: np.ndarray
    flags: np.ndarray
    route: np.ndarray


def _stellar_values(head: Any, vectors: np.ndarray,
                    token_waves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One probe's ``(values, errors, flags)`` on embeddings whose valid tokens lie at ``token_waves``."""
    if len(vectors):
        values, errors = head.predict_with_spread(vectors)
    else:
        values = errors = np.zeros((0, len(head.names)))
    values, errors = np.array(values, dtype=np.float64), np.array(errors, dtype=np.float64)
    named = {name: values[:, k] for k, name in enumerate(head.names)}
    flags = finite_flags(values) | range_flags(named)
    for k, bad in enumerate(impossible_values(named).values()):
        values[bad, k] = errors[bad, k] = np.nan
    flags |= label_range_flags(named, (head.info or {}).get("label_range"))   # views: NaN where impossible
    flags |= probe_support_flags(token_waves, (head.info or {}).get("wavelength_support"))
    return values, errors, flags


def _valid_token_waves(items: list[InputItem]) -> list[np.ndarray]:
    return [item.prepared.wavelength[item.prepared.valid] for item in items]


def windowed(data: Any, window: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(wavelength, flux, ivar)`` of a :class:`~omnispectra.spectrum.SpectrumData` cut to
    ``window`` (``[lo, hi]`` Angstrom), bad pixels with ``ivar = 0``: what a survey stellar
    probe's training spectra were cut to before they were embedded."""
    keep = (data.wavelength >= window[0]) & (data.wavelength <= window[1])
    bad = data.bad[keep]
    return (data.wavelength[keep], np.where(bad, 0.0, np.nan_to_num(data.flux[keep])),
            np.where(bad, 0.0, np.nan_to_num(data.ivar[keep])))


def stellar_columns(head: Any, run: ProbeRun, survey: Any = None,
                    rows: np.ndarray | None = None) -> StellarColumns:
    """The stellar parameters of every row, with their flags (:class:`StellarColumns`).

    A physically impossible value becomes NaN (its error too) with ``IMPOSSIBLE_VALUE``;
    a physical value outside the range of the labels the probe learned (its header's
    ``label_range``) is kept with ``OUT_OF_DOMAIN``; ``NONFINITE``; ``OUTSIDE_SUPPORT``
    outside the probe's own training wavelengths.

    With ``survey`` (a probe trained on library stars observed through survey grids, storing
    ``support_by_grid`` and ``input_window``), each row is answered by the probe of the grid
    it lies on (:func:`omnispectra.probes.stellar_grids`): a spectrum on the library's own grid
    (:data:`LIBRARY_GRID`) by ``head``; one on a survey grid by ``survey``, from its pixels inside
    the ``input_window`` (:func:`windowed`), embedded again as the probe's training spectra
    were; one on no grid by ``head`` with ``OUT_OF_DOMAIN`` (an infrared, echelle or sharper
    spectrum); an input given as tokens (no pixels to cut) by ``head``. ``rows`` (bool, N):
    the rows the survey probe may answer (the stars; default all), so that no other row is
    embedded twice.
    """
    from ..probes import stellar_grids

    if head.members < 2:
        logger.warning("the stellar-parameter probe is a single head (no ensemble): uncertainties are NaN")
    values, errors, flags = _stellar_values(head, run.done.vectors, _valid_token_waves(run.items))
    route = np.full(len(run.items), "library", dtype="U7")
    if survey is None or not run.items:
        return StellarColumns(values.astype(np.float32), errors.astype(np.float32), flags, route)
    window = survey.info["input_window"]
    datas = [item.data for item in run.items]
    # Tokens given as input carry no pixels to cut: the library probe answers them, as before
    grids = [LIBRARY_GRID if d is None else grid for d, grid in zip(datas, stellar_grids(
        survey, [np.zeros(0) if d is None else d.wavelength[~d.bad] for d in datas]), strict=True)]
    flags |= np.asarray([0 if grid else int(Flag.OUT_OF_DOMAIN) for grid in grids], dtype=np.int64)
    wanted = np.ones(len(grids), dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    cut_rows = [i for i, grid in enumerate(grids) if grid not in ("", LIBRARY_GRID) and wanted[i]]
    if cut_rows:
        options = RunOptions(dtype=run.done.torch_dtype, progress=False, on_error="skip")
        cut = forward([windowed(datas[i], window) for i in cut_rows], run.net, options, desc="star windows")
        done = [cut_rows[int(item.id)] for item in cut.items]   # inputs are named by their position
        v, e, f = _stellar_values(survey, cut.vectors, _valid_token_waves(cut.items))
        values[done], errors[done], flags[done], route[done] = v, e, f, "survey"
        for i in sorted(set(cut_rows) - set(done)):   # a window that could not be embedded: flagged
            logger.warning("star %s: its pixels inside %s A could not be embedded", run.items[i].id, window)
            flags[i] |= Flag.OUT_OF_DOMAIN
    return StellarColumns(values.astype(np.float32), errors.astype(np.float32), flags, route)


def add_stellar_columns(table: Any, names: list[str], values: np.ndarray, errors: np.ndarray,
                        route: np.ndarray | None = None) -> None:
    """``<name>`` and ``<name>_err`` columns with units, and ``params_by`` (which stellar probe
    answered: :class:`StellarColumns`' ``route``) when given."""
    from ..results import quantity_unit

    descriptions = {"teff": "effective temperature", "logg": "log10 surface gravity [cm s^-2]",
                    "fe_h": "iron abundance [Fe/H] (dex)"}
    for k, name in enumerate(names):
        unit = quantity_unit(name)
        table[name] = values[:, k]
        table[name].description = descriptions.get(name, name)
        table[f"{name}_err"] = errors[:, k]
        table[f"{name}_err"].description = f"1-sigma uncertainty of {name} (calibrated ensemble spread)"
        if unit is not None:
            table[name].unit = table[f"{name}_err"].unit = unit
    if route is not None:
        table["params_by"] = route
        table["params_by"].description = ("stellar probe of the row's grid: 'library' (MILES stars) or "
                                          "'survey' (MILES stars observed through survey grids)")


def classes_with_templates(head: Any, prob: np.ndarray,
                           fits: list[Any]) -> tuple[list[str], np.ndarray, str]:
    """``(classes, probabilities, method)``: the probe's probabilities joined with the template
    evidence when the probe stores a combination (:mod:`omnispectra.class_evidence`)."""
    from ..class_evidence import combination_of, combine, template_evidence

    params = combination_of(getattr(head, "calibration", None), head.names)
    if params is not None and len(prob):
        prob = combine(prob, template_evidence([r.class_chi2 for r in fits], head.names), params)
    method = "network" if params is None else "network+templates"
    return [head.names[k] for k in np.argmax(prob, axis=1)], prob, method


def poor_fit_flags(fits: list[Any], config: Any) -> np.ndarray:
    """``POOR_FIT`` where the best template barely beats a smooth model (the stored
    significance quantile of :mod:`omnispectra.domain`; nothing when no domain is bundled).
    The smooth model's chi-square is the one each fit recorded on its own pixels
    (:attr:`omnispectra.redshift.RedshiftResult.smooth_chi2`)."""
    domain = domains.training_domain()
    if domain is None:
        return np.zeros(len(fits), dtype=np.int64)
    significance = np.array([domains.result_significance(fit, config.n_poly) for fit in fits],
                            dtype=np.float64)
    return domain.fit_flags(significance)


def _coefficients(results: list[Any], width: int) -> np.ndarray:
    coeff = np.full((len(results), width), np.nan)
    for i, r in enumerate(results):
        coeff[i, :min(width, len(r.coefficients))] = r.coefficients[:width]
    return coeff


def redshift_columns(fits: list[Any], classes: list[str], width: int) -> dict[str, Any]:
    """Each row's best solution of its chosen class, as columns.

    ``spectype``, ``subtype``, ``z``, ``z_err``, ``chi2``, ``deltachi2``, ``coeff`` (the
    template coefficients then the Legendre terms, NaN-padded to ``width``) and ``flag``:
    the fit's bits (without ``LOW_SN``, which is the input check's), ``NONFINITE``,
    ``IMPOSSIBLE_VALUE``, ``DISAGREEMENT`` between the fit's best class and the chosen
    class, ``WRONG_CLASS`` for a star's radial velocity.
    """
    results = [fit.per_class.get(cls, fit) for fit, cls in zip(fits, classes, strict=True)]
    z = np.asarray([r.z for r in results], dtype=np.float64)
    reported = [r.spectype for r in results]
    best = [r.candidates[0][0] if r.candidates else r.spectype for r in results]
    fit_flags = np.asarray([int(r.flag) & ~int(Flag.LOW_SN) for r in results], dtype=np.int64)
    flags = (fit_flags | finite_flags(z) | range_flags({"z": z})
             | redshift_class_flags(classes, best, reported))
    return {"spectype": reported, "subtype": [r.subtype for r in results], "z": z,
            "z_err": np.asarray([r.z_err for r in results], dtype=np.float64),
            "chi2": np.asarray([r.chi2 for r in results], dtype=np.float64),
            "deltachi2": np.asarray([r.deltachi2 for r in results], dtype=np.float64),
            "coeff": _coefficients(results, width), "flag": flags}


def add_redshift_columns(table: Any, fit: dict[str, Any]) -> None:
    """The redshift columns of :func:`redshift_columns`, described."""
    empty = not len(fit["z"])
    for name, description in (
            ("spectype", "class of the reported template solution (STAR: z is a radial velocity)"),
            ("subtype", "template subtype of the reported solution (STAR: spectral type)")):
        table[name] = np.zeros(0, dtype="U6") if empty else np.asarray(fit[name], dtype=str)
        table[name].description = description
    for name, description in (("z", "redshift of the template fit (STAR: radial velocity, 1 + z Doppler)"),
                              ("z_err", "1-sigma redshift uncertainty (chi-square curvature)"),
                              ("chi2", "chi-square of the reported solution"),
                              ("deltachi2", "chi-square of the next distinct solution minus this one's"),
                              ("coeff", "template coefficients, then the Legendre terms (NaN-padded)")):
        table[name] = fit[name]
        table[name].description = description


def add_flag_columns(table: Any, **flags: np.ndarray) -> None:
    """``class_flag``/``z_flag``/``params_flag`` (each kept to its bits) and ``flag``, their OR."""
    total = np.zeros(len(table), dtype=np.int64)
    for name, values in flags.items():
        description, bits = FLAG_COLUMNS[name]
        column = np.asarray(values, dtype=np.int64) & int(bits)
        table[name] = column
        table[name].description = description
        total |= column
    table["flag"] = total
    table["flag"].description = FLAG_DESCRIPTION + (" (the OR of " + ", ".join(flags) + ")")


def add_anomaly_column(table: Any, run: ProbeRun) -> None:
    """The ``anomaly`` statistic (NaN when not computed) and ``noise_estimated`` (True where
    the input had no uncertainties and the statistic used an estimated noise)."""
    table["anomaly"] = run.anomaly if run.anomaly is not None else np.full(len(table), np.nan)
    table["anomaly"].description = FIT_ANOMALY_DESCRIPTION if run.from_fit else ANOMALY_DESCRIPTION
    table["noise_estimated"] = noise_estimated(run.items)
    table["noise_estimated"].description = NOISE_ESTIMATED_DESCRIPTION
