"""Template bases and the physics shared by the redshift fitter and the data engine.

:mod:`~omnispectra.templates.library` loads the Redrock bases and PyHammer composites,
:mod:`~omnispectra.templates.resample` rebins and broadens flux-conservingly, and
:mod:`~omnispectra.templates.igm` holds the Lyman-alpha forest. This package imports
nothing else of omnispectra but its exceptions, so inference never loads the engine.
"""

from .library import TemplateBasis, TemplateLibrary, load_library

__all__ = ["TemplateBasis", "TemplateLibrary", "load_library"]
