"""Inference: spectra in, answers out, one way down.

:mod:`~omnispectra.inference.inputs` (paths and objects -> items carrying their arrays and
tokens once) -> :mod:`~omnispectra.inference.pipeline` (one options record, batching, the
forward pass, provenance) -> :mod:`~omnispectra.inference.scoring` (masked MSE and
chi-square) -> the verbs: :mod:`~omnispectra.inference.embed`,
:mod:`~omnispectra.inference.anomaly`, :mod:`~omnispectra.inference.reconstruct`,
:mod:`~omnispectra.inference.predictors`. :mod:`omnispectra.api` re-exports the verbs.
Nothing here imports the data engine or the training code.
"""
