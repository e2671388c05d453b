"""The data engine: labelled, survey-realistic training spectra from templates and real data.

It observes the template bases of :mod:`omnispectra.templates` (shared with the redshift
fitter) through :mod:`~omnispectra.engine.donors` (real spectra that lend grid, line
spread, noise and mask; training side of :mod:`omnispectra.splits` only):
:mod:`~omnispectra.engine.observe`, :mod:`~omnispectra.engine.generator`
(the :class:`Engine`), :mod:`~omnispectra.engine.labelled` (labelled library stars),
:mod:`~omnispectra.engine.augment` (real spectra, augmented) and
:mod:`~omnispectra.engine.stream` (torch datasets, corpus writing). See ``docs/engine.rst``.
"""

from .augment import AugmentConfig, augment_real
from .donors import Donor, donor_from_spectrum, select_side
from .generator import Engine, EngineConfig, EngineSample
from .labelled import LibraryStar, observe_star
from .observe import ObserveConfig
from .stream import (
                     ENGINE_SURVEY_PREFIX,
                     EngineDataset,
                     MixedDataset,
                     build_engine,
                     is_engine_survey,
                     write_engine_corpus,
)

__all__ = [
    "AugmentConfig", "augment_real", "Donor", "donor_from_spectrum", "select_side", "Engine",
    "EngineConfig", "EngineSample", "LibraryStar", "observe_star",
    "ObserveConfig", "EngineDataset", "MixedDataset", "build_engine",
    "write_engine_corpus", "ENGINE_SURVEY_PREFIX", "is_engine_survey",
]
