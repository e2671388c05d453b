"""The predictors: class, stellar parameters and redshift from the bundled probes and templates.

One pass embeds the inputs (and computes the anomaly statistic when the model card has a
threshold), the probes of :mod:`omnispectra.probes` turn embeddings into columns, the
template fit of :mod:`omnispectra.redshift` adds its evidence, and the rules of
:mod:`omnispectra.flags` set every row's ``flag`` (this module only measures and calls
them).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..exceptions import NonFiniteOutputError
from ..flags import FLAG_DESCRIPTION
from ..probes import checked_probe, probe_meta
from ..runtime import resolve_model
from .anomaly import ANOMALY_DESCRIPTION, anomaly_threshold, quality_flags
from .inputs import InputItem
from .pipeline import Pass, RunOptions, forward, item_table, result_meta
from .scoring import ANOMALY_N_MASKS, Masks

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..model import OmniSpectra

__all__ = ["classify", "predict_stellar_parameters", "predict_redshift", "fitter_name"]

logger = logging.getLogger(__name__)


@dataclass
class _ProbeRun:
    """Embeddings (and anomaly statistics) of the inputs that survived, with their table columns."""

    net: Any
    done: Pass
    threshold: float | None
    anomaly: np.ndarray | None   # (N,) statistic, None when not computed

    @property
    def items(self) -> list[InputItem]:
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

    def flags(self) -> np.ndarray:
        """The input checks and ``ANOMALY`` of every row."""
        from ..flags import anomaly_flags

        out = quality_flags(self.items)
        if self.anomaly is not None:
            out |= anomaly_flags(self.anomaly, self.threshold)
        return out

    def table(self, head: Any):
        """``id``, ``source_file``, ``survey`` and the provenance (``head``'s probe) in ``meta``."""
        table = item_table(self.items)
        table.meta.update(result_meta(self.net, self.done.inputs, self.done.torch_dtype, probe=head,
                                      kind="predictions"))
        table.meta["ANOMP99"] = float("nan") if self.threshold is None else self.threshold
        return table


def _embed_for_probes(spectra: Any, net: OmniSpectra, options: RunOptions,
                      anomaly: bool = False) -> _ProbeRun:
    """Embed measured inputs; the anomaly statistic too when the model has a threshold (or ``anomaly``)."""
    threshold = anomaly_threshold(net)
    masks = Masks(ANOMALY_N_MASKS) if (anomaly or threshold is not None) else None
    done = forward(spectra, net, options, masks=masks, measure=True)
    run = _ProbeRun(net, done, threshold, done.chi2 if masks is not None else None)
    if done.inputs.single and not done.items:
        raise done.inputs.skipped[-1].error
    return run


def _class_columns(head: Any, run: _ProbeRun) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(classes, calibrated probabilities (N, K), DISAGREEMENT flags)``; rows with a
    non-finite probability are rejected first (never a class from NaN)."""
    from ..flags import class_disagreement_flags

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


def _add_class_columns(table: Any, names: list[str], classes: list[str], prob: np.ndarray) -> None:
    table["class"] = np.asarray(classes, dtype=str) if classes else np.zeros(0, dtype="U6")
    table["class"].description = "source class (largest calibrated probability)"
    for k, name in enumerate(names):
        table[f"prob_{name}"] = prob[:, k].astype(np.float32)
        table[f"prob_{name}"].description = f"calibrated probability that the source is a {name}"


def _stellar_columns(head: Any, run: _ProbeRun) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(values (N, k), 1-sigma errors (N, k), NONFINITE|IMPOSSIBLE_VALUE flags, and
    OUTSIDE_SUPPORT outside the probe's own training range)`` in float32."""
    from ..flags import finite_flags, probe_support_flags, range_flags

    vectors = run.done.vectors

    if head.members < 2:
        logger.warning("the stellar-parameter probe is a single head (no ensemble): uncertainties are NaN")
    if len(vectors):
        values, errors = head.predict_with_spread(vectors)
    else:
        values = errors = np.zeros((0, len(head.names)))
    flags = finite_flags(values) | range_flags({name: values[:, k] for k, name in enumerate(head.names)})
    tokens = [item.prepared for item in run.items]
    flags |= probe_support_flags([tok.wavelength[tok.valid] for tok in tokens],
                                 (head.info or {}).get("wavelength_support"))
    return values.astype(np.float32), errors.astype(np.float32), flags


def _add_stellar_columns(table: Any, names: list[str], values: np.ndarray, errors: np.ndarray) -> None:
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


def _template_fits(fitter: Any, items: list[InputItem]) -> list[Any]:
    """One full template fit per row, batched (:func:`omnispectra.redshift_batch.fit_many`); its
    ``per_class`` serves whichever class is chosen afterwards."""
    from ..flags import Flag
    from ..redshift import RedshiftResult
    from ..redshift_batch import fit_many

    # Tokens keep no pixel grid to fit (item.data is None)
    fitted = iter(fit_many(fitter, [item.data for item in items if item.data is not None]))
    return [RedshiftResult.no_fit(0, Flag.BAD_INPUT) if item.data is None else next(fitted) for item in items]


def _classes_with_templates(head: Any, prob: np.ndarray,
                            fits: list[Any]) -> tuple[list[str], np.ndarray, str]:
    """``(classes, probabilities, method)``: the probe's probabilities joined with the template
    evidence when the probe stores a combination (:mod:`omnispectra.class_evidence`)."""
    from ..class_evidence import combination_of, combine, template_evidence

    params = combination_of(head.calibration, head.names)
    if params is not None and len(prob):
        prob = combine(prob, template_evidence([r.class_chi2 for r in fits], head.names), params)
    method = "network" if params is None else "network+templates"
    return [head.names[k] for k in np.argmax(prob, axis=1)], prob, method


def _redshift_columns(fits: list[Any], classes: list[str]) -> dict[str, Any]:
    """Each row's best solution of its chosen class, as columns.

    Columns ``spectype``, ``z``, ``z_err``, ``deltachi2`` and ``flag`` (the fit's bits,
    ``NONFINITE``, ``IMPOSSIBLE_VALUE``, ``DISAGREEMENT`` between the fit's best class and
    the chosen class, ``WRONG_CLASS`` for a star's radial velocity).
    """
    from ..flags import Flag, finite_flags, range_flags, redshift_class_flags

    results = [fit.per_class.get(cls, fit) for fit, cls in zip(fits, classes, strict=True)]
    z = np.asarray([r.z for r in results], dtype=np.float64)
    reported = [r.spectype for r in results]
    best = [r.candidates[0][0] if r.candidates else r.spectype for r in results]
    # LOW_SN is the input check's (which knows placeholder uncertainties), not the fit's
    fit_flags = np.asarray([int(r.flag) & ~int(Flag.LOW_SN) for r in results], dtype=np.int64)
    flags = (fit_flags | finite_flags(z)
             | range_flags({"z": z}) | redshift_class_flags(classes, best, reported))
    return {"spectype": reported, "z": z, "z_err": np.asarray([r.z_err for r in results], dtype=np.float64),
            "deltachi2": np.asarray([r.deltachi2 for r in results], dtype=np.float64), "flag": flags}


def _add_redshift_columns(table: Any, fit: dict[str, Any]) -> None:
    table["spectype"] = np.asarray(fit["spectype"], dtype=str) if len(fit["z"]) else np.zeros(0, dtype="U6")
    table["spectype"].description = "class of the reported template solution (STAR: z is a radial velocity)"
    for name, description in (("z", "redshift of the template fit (STAR: radial velocity, 1 + z Doppler)"),
                              ("z_err", "1-sigma redshift uncertainty (chi-square curvature)"),
                              ("deltachi2", "chi-square of the next distinct solution minus this one's")):
        table[name] = fit[name]
        table[name].description = description


def _add_flag_column(table: Any, flag: np.ndarray) -> None:
    table["flag"] = np.asarray(flag, dtype=np.int64)
    table["flag"].description = FLAG_DESCRIPTION


def _add_anomaly_column(table: Any, run: _ProbeRun) -> None:
    table["anomaly"] = run.anomaly if run.anomaly is not None else np.full(len(table), np.nan)
    table["anomaly"].description = ANOMALY_DESCRIPTION


def classify(
    spectra: Any,
    model: str | os.PathLike | OmniSpectra = "default",
    probe: Any = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = "auto",
    progress: bool | None = None,
    format: str | None = None,
    on_error: str = "raise",
    workers: int | None = None,
    full: bool = False,
    stellar_probe: Any = None,
    templates: Any = None,
):
    """Source class (GALAXY, QSO or STAR) of spectra, with calibrated probabilities and a flag.

    A probe on the mean-pooled embedding (paper, *Source Classification*; the bundled
    probe's recipe is recorded in its file, ``Probe.info``, and in the model card; its
    held-out scores are in ``omnispectra/data/predictors.json``). The probabilities are
    ``softmax(logits / T)`` with the temperature ``T`` stored in the probe
    (``calibration.temperature``; 1 when absent, :attr:`omnispectra.probes.Probe.temperature`).

    With ``full=True`` the answer is one Redrock-like catalogue row per spectrum: class and
    probabilities, the template redshift (:func:`predict_redshift`), the stellar parameters
    with uncertainties (:func:`predict_stellar_parameters`) for rows classified STAR, the
    anomaly statistic (:func:`anomaly_statistic`) and one ``flag``.

    Parameters
    ----------
    spectra : spectrum, path, or iterable of them
        As for :func:`embed` (files and directories are read with :func:`omnispectra.io.read`).
    model : str, path-like or OmniSpectra
        The encoder; must be the one the probe was trained on (default: the bundled model).
    probe : path or Probe, optional
        The class probe. Default: the probe bundled with the package.
    batch_size, device, dtype, progress, format, on_error, workers
        As for :func:`embed`: ``dtype="auto"`` means the device's default for every verb
        and every row (float32 on CPUs, bfloat16 autocast on CUDA GPUs); ``meta['DTYPE']``
        says which was used. On a GPU, pass ``dtype="float32"`` for the full row's stellar
        parameters at the precision :func:`predict_stellar_parameters` uses by default.
    full : bool
        Return the full catalogue row (see Returns).
    stellar_probe : path or Probe, optional
        With ``full``: the stellar-parameter probe (default: the bundled one).
    templates : path or RedshiftFitter, optional
        The Redrock templates (:func:`omnispectra.pretrained.resolve_templates`: this, else,
        with ``full``, ``$OMNISPECTRA_TEMPLATES``, else the compact templates bundled with
        the package).
        When templates are used (given, or ``full``) and the probe stores a template
        combination, the class joins the probe's probabilities with the chi-square
        differences of the classes' template fits (:mod:`omnispectra.class_evidence`;
        ``meta['CLASSBY']`` says ``network+templates``, else ``network``).

    Returns
    -------
    astropy.table.Table
        One row per spectrum that was classified, in input order: ``id``,
        ``source_file``, ``survey``, ``class``, ``prob_<CLASS>`` for every class of the
        probe (``prob_GALAXY``, ``prob_QSO``, ``prob_STAR``) and ``flag`` (bits of
        :class:`omnispectra.flags.Flag`: ``OUTSIDE_SUPPORT``, ``FEW_TOKENS``, ``LOW_SN``,
        ``DISAGREEMENT`` between ensemble members, ``ANOMALY``; ``flag == 0`` means use it).
        With ``full=True`` also ``spectype``, ``z``, ``z_err``, ``deltachi2``,
        ``teff``/``teff_err`` (K), ``logg``/``logg_err``, ``fe_h``/``fe_h_err`` (NaN
        unless ``class`` is STAR), ``anomaly``, before ``flag`` (see :doc:`/flags` for the
        bits a full row can carry). ``meta`` holds the provenance
        (:func:`omnispectra.results.provenance_meta`), the counts (``n_inputs == n_read +
        n_skipped``) and ``skipped`` (``[{source, reason[, id]}, ...]``).

    Raises
    ------
    CheckpointError
        A bundled probe is missing, or a probe belongs to another encoder.
    TemplatesNotFoundError
        ``full=True`` without Redrock templates (checked before any input is read).
    NonFiniteOutputError
        An embedding or probability is not finite (never turned into a class).
    """
    from ..redshift import fitter_for

    net = resolve_model(model, device)
    head = checked_probe(probe, "source_class", net)
    fitter = fitter_for(templates) if (full or templates is not None) else None
    if full:
        stellar = checked_probe(stellar_probe, "stellar_params", net)
    run = _embed_for_probes(spectra, net, RunOptions(batch_size, dtype, progress, format, on_error, workers),
                            anomaly=full)
    classes, prob, flag = _class_columns(head, run)
    table = run.table(head)
    method = "network"
    if fitter is not None:
        fits = _template_fits(fitter, run.items)
        classes, prob, method = _classes_with_templates(head, prob, fits)
        table.meta.update(_fitter_meta(fitter))
    table.meta["CLASSBY"] = method
    _add_class_columns(table, head.names, classes, prob)
    flag = flag | run.flags()
    if full:
        from ..flags import Flag, not_star_flags

        table.meta.update(probe_meta(stellar, "S"))
        fit = _redshift_columns(fits, classes)
        _add_redshift_columns(table, fit)
        values, errors, stellar_flag = _stellar_columns(stellar, run)
        star = not_star_flags(classes) == 0
        values[~star], errors[~star] = np.nan, np.nan
        _add_stellar_columns(table, stellar.names, values, errors)
        _add_anomaly_column(table, run)
        # a star's z is its radial velocity by design here: WRONG_CLASS is for predict_redshift
        flag = flag | (fit["flag"] & ~int(Flag.WRONG_CLASS)) | np.where(star, stellar_flag, 0)
    _add_flag_column(table, flag)
    return table


def _fitter_meta(fitter: Any) -> dict[str, str]:
    """``TEMPLATE`` (the template names), ``TMPLREL`` and ``TMPLSHA`` (release and sha256) of a fit."""
    from ..pretrained import templates_meta

    return {"TEMPLATE": fitter_name(fitter), **templates_meta(fitter)}


def fitter_name(fitter: Any) -> str:
    """What a result's ``meta['TEMPLATE']`` says of a redshift fitter: its template names."""
    return ",".join(sorted({p.name.removeprefix("redrock:") for p in fitter.prepared}))


def predict_stellar_parameters(
    spectra: Any,
    model: str | os.PathLike | OmniSpectra = "default",
    probe: Any = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = "float32",
    progress: bool | None = None,
    format: str | None = None,
    on_error: str = "raise",
    workers: int | None = None,
    class_probe: Any = None,
):
    """Effective temperature, surface gravity and metallicity of stellar spectra, with errors.

    A probe on the embedding trained on the MILES stars (Teff fitted as log10 Teff; its
    head and recipe are recorded in the probe file); meaningful for stars only, with the
    accuracy recorded in ``omnispectra/data/predictors.json``. The uncertainties are the
    spread of the probe's ensemble members times the calibrated ``sigma_scale`` of the
    probe (:meth:`omnispectra.probes.Probe.predict_with_spread`); a single-head probe
    gives NaN uncertainties (and a logged warning). Parameters as for :func:`classify`,
    except that ``dtype`` defaults to float32 (see :func:`default_dtype`), and
    ``class_probe`` (default: the bundled class probe) says which spectra are stars.

    Returns
    -------
    astropy.table.Table
        ``id``, ``source_file``, ``survey``, ``teff``/``teff_err`` (K),
        ``logg``/``logg_err`` (dex(cm / s2)), ``fe_h``/``fe_h_err`` (dex), all float32,
        and ``flag`` (``NOT_STAR`` where the class probe does not say STAR,
        ``IMPOSSIBLE_VALUE`` outside :data:`omnispectra.flags.PHYSICAL_RANGES`,
        ``NONFINITE``, and the input checks and ``ANOMALY`` of :func:`classify`), input
        order; ``meta`` as for :func:`classify` plus ``CPROBE``/``CPROBSHA``.
    """
    from ..flags import not_star_flags

    net = resolve_model(model, device)
    head = checked_probe(probe, "stellar_params", net)
    classifier = checked_probe(class_probe, "source_class", net)
    run = _embed_for_probes(spectra, net, RunOptions(batch_size, dtype, progress, format, on_error, workers))
    classes, _, _ = _class_columns(classifier, run)
    values, errors, flag = _stellar_columns(head, run)
    table = run.table(head)
    table.meta.update(probe_meta(classifier, "C"))
    _add_stellar_columns(table, head.names, values, errors)
    _add_flag_column(table, flag | not_star_flags(classes) | run.flags())
    return table


def predict_redshift(
    spectra: Any,
    model: str | os.PathLike | OmniSpectra = "default",
    probe: Any = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = "auto",
    progress: bool | None = None,
    format: str | None = None,
    on_error: str = "raise",
    workers: int | None = None,
    templates: Any = None,
):
    """Redshift of galaxy and quasar spectra: a full-range template fit, its class chosen by the network.

    Every spectrum is fitted with :class:`omnispectra.redshift.RedshiftFitter` (a
    chi-square scan of the Redrock bases over the full redshift range of each class,
    refined around the best minima). The class (see :func:`classify`: the probe's
    probabilities joined with the template evidence when the probe stores a combination)
    chooses which class's best solution is reported; ``deltachi2`` is the chi-square of
    the next distinct solution minus the reported one's (negative when the templates
    prefer another solution). A spectrum classified STAR gets its radial
    velocity as ``z`` (relativistic Doppler, ``z ~ v / c``) and ``WRONG_CLASS``.

    Parameters
    ----------
    probe : path or Probe, optional
        The class probe (default: the bundled one).
    templates : path or RedshiftFitter, optional
        The Redrock template folder: this, else ``$OMNISPECTRA_TEMPLATES``
        (:func:`omnispectra.pretrained.resolve_templates`), else the bundled compact templates.
    spectra, model, batch_size, device, dtype, progress, format, on_error, workers
        As for :func:`classify`.

    Returns
    -------
    astropy.table.Table
        ``id``, ``source_file``, ``survey``, ``class`` (the probe's, joined with the
        template evidence as in :func:`classify`; ``meta['CLASSBY']``), ``spectype`` (the
        reported solution's), ``z``, ``z_err``, ``deltachi2`` and ``flag`` (the fit's
        ``Z_EDGE``, ``SMALL_DELTACHI2``, ``NEGATIVE_MODEL``, ``LITTLE_COVERAGE``,
        ``BAD_MINFIT``, ``BAD_INPUT``; ``WRONG_CLASS``; ``DISAGREEMENT`` when the fit's best
        class differs from the chosen class or the class ensemble disagrees;
        ``IMPOSSIBLE_VALUE`` for ``z <`` :data:`omnispectra.flags.Z_MIN`; ``NONFINITE`` when
        nothing could be fitted; the input checks ``OUTSIDE_SUPPORT`` and ``FEW_TOKENS``, not
        :data:`omnispectra.flags.REDSHIFT_EXEMPT`). Input order; ``meta``
        as for :func:`classify` plus ``TEMPLATE``.

    Raises
    ------
    TemplatesNotFoundError
        No Redrock templates (checked before any input is read).
    """
    from ..flags import REDSHIFT_EXEMPT
    from ..redshift import fitter_for

    net = resolve_model(model, device)
    head = checked_probe(probe, "source_class", net)
    fitter = fitter_for(templates)
    run = _embed_for_probes(spectra, net, RunOptions(batch_size, dtype, progress, format, on_error, workers))
    _, prob, class_flag = _class_columns(head, run)
    fits = _template_fits(fitter, run.items)
    classes, _, method = _classes_with_templates(head, prob, fits)
    fit = _redshift_columns(fits, classes)
    table = run.table(head)
    table.meta.update(_fitter_meta(fitter))
    table.meta["CLASSBY"] = method
    table["class"] = np.asarray(classes, dtype=str) if classes else np.zeros(0, dtype="U6")
    table["class"].description = "source class (probe and templates; chooses the reported solution)"
    _add_redshift_columns(table, fit)
    _add_flag_column(table, (fit["flag"] | class_flag | run.flags()) & ~int(REDSHIFT_EXEMPT))
    return table
