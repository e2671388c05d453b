"""The face of the package: spectra in; embeddings, classes, redshifts, parameters and scores out.

This module holds no logic: it gathers the user verbs, which live in
:mod:`omnispectra.inference` (see ``docs/architecture.rst`` for how data flows down
through it). Every verb accepts spectra in the same forms (see :func:`embed`; the inputs
are expanded by :class:`omnispectra.inference.inputs.Inputs` and paths by
:mod:`omnispectra.io.sources`, so a folder gives the same files as ``omnispectra corpus
build``) and a model as a name, a weights-file path or an
:class:`~omnispectra.model.OmniSpectra` instance (resolved by
:func:`omnispectra.runtime.resolve_model`). Inference batches spectra of similar length
together (:func:`~omnispectra.collate.length_sorted_batches`) and returns rows in input
order.

Inputs that cannot be used follow ``on_error``: ``"raise"`` (default) raises the typed
error naming the input; ``"skip"`` and ``"warn"`` leave it out, log it (``"warn"`` also
emits a :class:`~omnispectra.io.sources.SpectrumReadWarning`) and list it in the result
table's ``meta['skipped']`` as ``{source, reason[, id]}``. Every spectrum is checked at
the boundary: its length (:data:`omnispectra.spectrum.DEFAULT_MAX_PIXELS`), unit-less
wavelengths against the model's wavelength support
(:func:`omnispectra.runtime.check_wavelength_plausible`), a spectrum entirely outside
that support (:func:`omnispectra.runtime.check_support`), and every embedding and class
probability for NaN/inf (:class:`~omnispectra.exceptions.NonFiniteOutputError`; never a
class from NaN).

The predictors (:func:`classify`, :func:`predict_stellar_parameters`,
:func:`predict_redshift`, :func:`anomaly_score` with ``as_table=True``) give every row a
``flag`` bitmask (:class:`omnispectra.flags.Flag`, ``flag == 0``: use it); the rules that
set its bits live in :mod:`omnispectra.flags` (see ``docs/flags.rst``); the predictors
only measure the inputs and call them. A non-finite *regression* value (or a redshift that
could not be fitted) is returned with ``NONFINITE`` set rather than refused.
"""

from __future__ import annotations

from .inference.anomaly import anomaly_score, anomaly_statistic, anomaly_threshold
from .inference.embed import embed, token_summary
from .inference.predictors import classify, predict_redshift, predict_stellar_parameters
from .inference.reconstruct import Reconstruction, reconstruct
from .probes import resolve_probe
from .runtime import default_dtype

__all__ = [
    "embed",
    "classify",
    "predict_stellar_parameters",
    "predict_redshift",
    "anomaly_score",
    "anomaly_statistic",
    "anomaly_threshold",
    "reconstruct",
    "Reconstruction",
    "token_summary",
    "resolve_probe",
    "default_dtype",
]
