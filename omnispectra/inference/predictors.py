"""The predictors: class, stellar parameters and redshift from the bundled probes and templates.

One pass embeds the inputs, the probes of :mod:`omnispectra.probes` turn embeddings into
columns, the template fit of :mod:`omnispectra.redshift` adds its evidence and the anomaly
statistic (its residuals; rows without a fit get the masked-reconstruction statistic when
the model card has a threshold), and
:mod:`omnispectra.inference.rows` gathers the bits of :mod:`omnispectra.flags` and
:mod:`omnispectra.domain` into one flag per quantity (this module only calls them).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..flags import Flag, not_star_flags, redshift_class_flags
from ..probes import checked_probe, probe_meta
from ..runtime import model_device, resolve_model
from .inputs import InputItem
from .pipeline import RunOptions
from .rows import (
    ProbeRun,
    add_anomaly_column,
    add_class_columns,
    add_flag_columns,
    add_redshift_columns,
    add_stellar_columns,
    class_columns,
    classes_with_templates,
    embed_for_probes,
    poor_fit_flags,
    redshift_columns,
    stellar_columns,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..model import OmniSpectra

__all__ = ["classify", "predict_stellar_parameters", "predict_redshift", "fitter_name", "coefficient_width",
           "survey_probe_for"]

logger = logging.getLogger(__name__)


def _template_fits(fitter: Any, items: list[InputItem], device: Any = None) -> list[Any]:
    """One full template fit per row, batched on the model's ``device``
    (:func:`omnispectra.redshift_batch.fit_many`); its ``per_class`` serves whichever class is
    chosen afterwards."""
    from ..flags import Flag
    from ..redshift import RedshiftResult
    from ..redshift_batch import fit_many

    # Tokens keep no pixel grid to fit (item.data is None)
    fitted = iter(fit_many(fitter, [item.data for item in items if item.data is not None], device=device))
    return [RedshiftResult.no_fit(0, Flag.BAD_INPUT) if item.data is None else next(fitted) for item in items]


@dataclass
class _TemplateEvidence:
    """The template fits of a run's rows and what they add: the class joined with the
    probe, ``POOR_FIT`` and the provenance."""

    fits: list[Any]
    classes: list[str]
    prob: np.ndarray
    method: str
    poor: np.ndarray
    width: int

    @property
    def class_flags(self) -> np.ndarray:
        """``POOR_FIT``, and ``DISAGREEMENT`` where the fit's best class is not the chosen one.

        A class that joined the template evidence is not flagged ``LOW_SN``: its calibrated
        probability already weighs how well the data separate the classes (of 11 labelled
        SDSS/BOSS/eBOSS rows flagged only ``LOW_SN``, 10 had the right class, most with
        probabilities below 0.95; ``benchmarks/flag_rates.py``). A chosen class the
        templates could not fit (no coverage) is not contradicted by the classes they could.
        """
        best = [fit.candidates[0][0] if fit.candidates else "" for fit in self.fits]
        tested = [np.isfinite(fit.class_chi2.get(c, np.nan)) for fit, c in zip(self.fits, self.classes,
                                                                                strict=True)]
        differ = redshift_class_flags(self.classes, best, best, tested) & int(Flag.DISAGREEMENT)
        return self.poor | differ


def _template_evidence(fitter: Any, head: Any, prob: np.ndarray, run: ProbeRun) -> _TemplateEvidence:
    """The rows' template fits and what they add; their residuals become ``run``'s anomaly statistic."""
    fits = _template_fits(fitter, run.items, model_device(run.net))
    classes, prob, method = classes_with_templates(head, prob, fits)
    run.use_fit_anomaly(fits, classes)
    return _TemplateEvidence(fits, classes, prob, method, poor_fit_flags(fits, fitter.config),
                             coefficient_width(fitter))


def coefficient_width(fitter: Any) -> int:
    """Length of a catalogue's ``coeff`` column: the largest template basis plus the
    Legendre terms (the same for every row and call with one set of templates)."""
    return max(p.coarse_red.shape[0] for p in fitter.prepared) + fitter.config.n_poly


def _z_flags(fit: dict[str, Any], run: ProbeRun, evidence: _TemplateEvidence, domain: np.ndarray,
             ensemble: np.ndarray) -> np.ndarray:
    """``z_flag``: the fit's bits, ``POOR_FIT``, ``OUT_OF_DOMAIN``, the class ensemble's
    ``DISAGREEMENT``, and of the input checks those that concern a redshift (not ``LOW_SN``:
    ``deltachi2`` measures how well the data constrain z; ``ANOMALY`` only far above its
    threshold)."""
    return fit["flag"] | evidence.poor | domain | ensemble | run.input_flags(far_anomaly_only=True)


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
    fast: bool = False,
    stellar_survey_probe: Any = None,
):
    """Source class (GALAXY, QSO or STAR) of spectra, with calibrated probabilities and flags.

    A probe on the mean-pooled embedding (paper, *Source Classification*; the bundled
    probe's recipe is recorded in its file, ``Probe.info``, and in the model card; its
    held-out scores are in ``omnispectra/data/predictors.json``). The probabilities are
    ``softmax(logits / T)`` with the temperature ``T`` stored in the probe
    (``calibration.temperature``; 1 when absent, :attr:`omnispectra.probes.Probe.temperature`).

    By default the class is the probe's probabilities joined with the evidence of a
    full-range template fit (the chi-square differences between the classes' best Redrock
    solutions, :mod:`omnispectra.class_evidence`; the templates ship with the package), the
    best path measured (see the model card); ``fast=True`` is the probe alone (about
    ten times faster; ``meta['CLASSBY']`` says which).

    With ``full=True`` the answer is one Redrock-like catalogue row per spectrum: class and
    probabilities, the template redshift (:func:`predict_redshift`), the stellar parameters
    with uncertainties (:func:`predict_stellar_parameters`) for rows classified STAR, the
    anomaly statistic (with a template fit, the best model's residual chi-square,
    :func:`omnispectra.redshift.residual_chi2`; without, :func:`anomaly_statistic`) and a
    flag per quantity.

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
    stellar_survey_probe : path, Probe or False, optional
        With ``full``: the stellar probe of survey grids, as for
        :func:`predict_stellar_parameters`.
    templates : path or RedshiftFitter, optional
        The Redrock templates (:func:`omnispectra.pretrained.resolve_templates`: this, else
        ``$OMNISPECTRA_TEMPLATES``, else the compact templates bundled with the package).
        When the probe stores a template combination, the class joins the probe's
        probabilities with the chi-square differences of the classes' template fits
        (``meta['CLASSBY']`` says ``network+templates``, else ``network``).
    fast : bool
        The probe alone, no template fit (``meta['CLASSBY'] = 'network'``); not with
        ``full`` or ``templates``.

    Returns
    -------
    astropy.table.Table
        One row per spectrum that was classified, in input order: ``id``,
        ``source_file``, ``survey``, ``class``, ``prob_<CLASS>`` for every class of the
        probe (``prob_GALAXY``, ``prob_QSO``, ``prob_STAR``), ``class_flag`` (bits of
        :class:`omnispectra.flags.Flag` in :data:`~omnispectra.flags.CLASS_BITS`: the input
        checks ``OUTSIDE_SUPPORT``, ``FEW_TOKENS``, ``LOW_SN``; ``DISAGREEMENT`` between
        ensemble members; ``ANOMALY``; ``OUT_OF_DOMAIN`` outside the stored training
        domain, :mod:`omnispectra.domain`; ``POOR_FIT`` when no template describes the data)
        and ``flag`` (the OR of the flag columns; ``0`` means use the row).
        With ``full=True`` also ``spectype``, ``subtype``, ``z``, ``z_err``, ``chi2``,
        ``deltachi2``, ``coeff``, ``teff``/``teff_err`` (K), ``logg``/``logg_err``,
        ``fe_h``/``fe_h_err`` (NaN unless ``class`` is STAR), ``anomaly``, ``z_flag`` (the
        redshift's bits, :data:`~omnispectra.flags.Z_BITS`) and ``params_flag`` (the
        stellar parameters' bits, 0 unless STAR; :data:`~omnispectra.flags.PARAMS_BITS`),
        before ``flag`` (see :doc:`/flags`). ``meta`` holds the provenance
        (:func:`omnispectra.results.provenance_meta`), the counts (``n_inputs == n_read +
        n_skipped``) and ``skipped`` (``[{source, reason[, id]}, ...]``).

    Raises
    ------
    CheckpointError
        A bundled probe is missing, or a probe belongs to another encoder.
    TemplatesNotFoundError, InvalidTemplatesError
        Templates asked for but missing, or degenerate (checked before any input is read).
    NonFiniteOutputError
        An embedding or probability is not finite (never turned into a class).
    ValueError
        ``fast=True`` with ``full`` or ``templates``.
    """
    from ..redshift import fitter_for

    if fast and (full or templates is not None):
        raise ValueError("fast=True is the probe alone: it takes no templates and gives no full row")
    net = resolve_model(model, device)
    head = checked_probe(probe, "source_class", net)
    fitter = None if fast else fitter_for(templates)
    stellar = checked_probe(stellar_probe, "stellar_params", net) if full else None
    survey = survey_probe_for(stellar_probe, stellar_survey_probe, net) if full else None
    # with a template fit, its residuals give the anomaly statistic: no masked passes
    run = embed_for_probes(spectra, net, RunOptions(batch_size, dtype, progress, format, on_error, workers),
                           masked_anomaly=fitter is None)
    classes, prob, ensemble = class_columns(head, run)
    domain = run.domain_flags()
    evidence = None if fitter is None else _template_evidence(fitter, head, prob, run)
    class_flag = run.input_flags() | ensemble | domain
    table = run.table(head)
    if evidence is not None:
        classes, prob = evidence.classes, evidence.prob
        class_flag = (class_flag & ~int(Flag.LOW_SN)) | evidence.class_flags
        table.meta.update(_fitter_meta(fitter))
    table.meta["CLASSBY"] = "network" if evidence is None else evidence.method
    add_class_columns(table, head.names, classes, prob)
    if not full:
        add_flag_columns(table, class_flag=class_flag)
        return table
    table.meta.update({**probe_meta(stellar, "S"), **_survey_meta(survey)})
    fit = redshift_columns(evidence.fits, classes, evidence.width)
    add_redshift_columns(table, fit)
    star = not_star_flags(classes) == 0
    stars = stellar_columns(stellar, run, survey, rows=star)
    values, errors, params_flag = stars.values, stars.errors, stars.flags
    values[~star], errors[~star] = np.nan, np.nan
    add_stellar_columns(table, stellar.names, values, errors, np.where(star, stars.route, ""))
    add_anomaly_column(table, run)
    # a star's z is its radial velocity by design here: WRONG_CLASS is for predict_redshift
    z_flag = _z_flags(fit, run, evidence, domain, ensemble) & ~int(Flag.WRONG_CLASS)
    params_flag = np.where(star, params_flag | run.input_flags() | domain, 0)
    add_flag_columns(table, class_flag=class_flag, z_flag=z_flag, params_flag=params_flag)
    return table


def survey_probe_for(library_probe: Any, survey_probe: Any, net: Any) -> Any:
    """The stellar probe of survey grids that answers with ``library_probe`` (a verb's
    arguments): ``survey_probe`` checked against ``net``; for ``None``, the bundled one when
    the library probe is the bundled one too (the two are trained as a pair), else none;
    none for ``False``."""
    if survey_probe is False or (survey_probe is None and library_probe is not None):
        return None
    return checked_probe(survey_probe, "stellar_params_survey", net)


def _survey_meta(survey: Any) -> dict[str, str]:
    """``GPROBE``/``GPROBSHA``: the survey-grid stellar probe (empty when there is none)."""
    return probe_meta(survey, "G") if survey is not None else {"GPROBE": "", "GPROBSHA": ""}


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
    stellar_survey_probe: Any = None,
):
    """Effective temperature, surface gravity and metallicity of stellar spectra, with errors.

    Two probes on the embedding (Teff fitted as log10 Teff; heads and recipes recorded in
    the probe files), meaningful for stars only: ``probe``, trained on the MILES stars, for
    spectra on the MILES grid, and ``stellar_survey_probe``, trained on MILES stars and on
    MILES stars observed through SDSS, BOSS, LAMOST LRS, DESI and 6dFGS donors, for spectra on
    those grids, from their pixels inside MILES' range (3,541-7,412 A;
    :func:`omnispectra.inference.rows.stellar_columns`). ``params_by`` says which answered; a
    spectrum on none of these grids (infrared, an echelle order, sharper than MILES) keeps the
    MILES probe's numbers with ``OUT_OF_DOMAIN``. Accuracy: ``omnispectra/data/predictors.json``
    and the model card. The uncertainties are the spread of a probe's ensemble members times
    its calibrated ``sigma_scale`` (:meth:`omnispectra.probes.Probe.predict_with_spread`); a
    single-head probe gives NaN uncertainties (and a logged warning). Parameters as for
    :func:`classify`, except that ``dtype`` defaults to float32 (see :func:`default_dtype`),
    ``class_probe`` (default: the bundled class probe) says which spectra are stars, and
    ``stellar_survey_probe`` (default: the bundled one when ``probe`` is the bundled one,
    else none; ``False``: ``probe`` alone; :func:`survey_probe_for`).

    Returns
    -------
    astropy.table.Table
        ``id``, ``source_file``, ``survey``, ``teff``/``teff_err`` (K),
        ``logg``/``logg_err`` (dex(cm / s2)), ``fe_h``/``fe_h_err`` (dex), all float32,
        ``params_by`` (``library`` or ``survey``),
        ``params_flag`` (``NOT_STAR`` where the class probe does not say STAR,
        ``IMPOSSIBLE_VALUE`` outside :data:`omnispectra.flags.PHYSICAL_RANGES`, where the
        value is returned as NaN, ``NONFINITE``, ``OUTSIDE_SUPPORT`` outside the probe's
        own training range, ``OUT_OF_DOMAIN``, and the input checks and ``ANOMALY`` of
        :func:`classify`) and ``flag`` (= ``params_flag``), input order; ``meta`` as for
        :func:`classify` plus ``CPROBE``/``CPROBSHA`` and ``GPROBE``/``GPROBSHA`` (the
        survey-grid probe).
    """
    from ..flags import not_star_flags

    net = resolve_model(model, device)
    head = checked_probe(probe, "stellar_params", net)
    classifier = checked_probe(class_probe, "source_class", net)
    survey = survey_probe_for(probe, stellar_survey_probe, net)
    run = embed_for_probes(spectra, net, RunOptions(batch_size, dtype, progress, format, on_error, workers))
    classes, _, _ = class_columns(classifier, run)
    not_star = not_star_flags(classes)
    stars = stellar_columns(head, run, survey, rows=not_star == 0)
    table = run.table(head)
    table.meta.update({**probe_meta(classifier, "C"), **_survey_meta(survey)})
    add_stellar_columns(table, head.names, stars.values, stars.errors, stars.route)
    params_flag = stars.flags | not_star | run.input_flags() | run.domain_flags()
    add_flag_columns(table, params_flag=params_flag)
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
        reported solution's), ``subtype``, ``z``, ``z_err``, ``chi2``, ``deltachi2``,
        ``coeff`` (template coefficients, then the Legendre terms), ``class_flag`` (as
        :func:`classify`'s) and ``z_flag`` (the fit's ``Z_EDGE``, ``SMALL_DELTACHI2``,
        ``NEGATIVE_MODEL``, ``LITTLE_COVERAGE``, ``BAD_MINFIT``, ``BAD_INPUT``;
        ``WRONG_CLASS``; ``DISAGREEMENT`` when the fit's best class differs from the chosen
        class or the class ensemble disagrees; ``IMPOSSIBLE_VALUE`` for ``z <``
        :data:`omnispectra.flags.Z_MIN`; ``NONFINITE`` when nothing could be fitted;
        ``POOR_FIT`` when the best template barely beats a smooth model; ``OUT_OF_DOMAIN``;
        the input checks ``OUTSIDE_SUPPORT`` and ``FEW_TOKENS``; ``ANOMALY`` only
        :data:`~omnispectra.flags.ANOMALY_FAR_FACTOR` times above its threshold; not
        ``LOW_SN``: ``deltachi2`` measures how well the data constrain z, as Redrock's
        ZWARN) and ``flag`` (= ``z_flag``: the table answers the redshift). Input order;
        ``meta`` as for :func:`classify` plus ``TEMPLATE``, ``TMPLREL``, ``TMPLSHA``.
        :func:`omnispectra.results.zbest_table` renames the columns as Redrock's zbest.

    Raises
    ------
    TemplatesNotFoundError, InvalidTemplatesError
        Templates missing where asked, or degenerate (checked before any input is read).
    """
    from ..redshift import fitter_for

    net = resolve_model(model, device)
    head = checked_probe(probe, "source_class", net)
    fitter = fitter_for(templates)
    run = embed_for_probes(spectra, net, RunOptions(batch_size, dtype, progress, format, on_error, workers),
                           masked_anomaly=False)
    _, prob, ensemble = class_columns(head, run)
    domain = run.domain_flags()
    evidence = _template_evidence(fitter, head, prob, run)
    fit = redshift_columns(evidence.fits, evidence.classes, evidence.width)
    table = run.table(head)
    table.meta.update(_fitter_meta(fitter))
    table.meta["CLASSBY"] = evidence.method
    table["class"] = np.asarray(evidence.classes, dtype=str) if evidence.classes else np.zeros(0, dtype="U6")
    table["class"].description = "source class (probe and templates; chooses the reported solution)"
    add_redshift_columns(table, fit)
    class_flag = (run.input_flags() & ~int(Flag.LOW_SN)) | ensemble | domain | evidence.class_flags
    add_flag_columns(table, class_flag=class_flag, z_flag=_z_flags(fit, run, evidence, domain, ensemble))
    table["flag"] = table["z_flag"]  # the table answers z: its flag is z_flag
    return table
