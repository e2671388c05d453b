"""omnispectra: a native-resolution foundation model for astronomical spectra."""

try:
    from ._version import version as __version__
except ImportError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from .exceptions import (
    CheckpointError,
    CorpusError,
    InvalidSpectrumError,
    NotASpectrumError,
    OmniSpectraError,
    SpectrumFormatError,
    SpectrumTypeError,
    UnitsError,
    UnknownFormatError,
)

__citation__ = (
    "Islam, M. K. & Fox, J., OmniSpectra: A Unified Foundation Model for Native "
    "Resolution Astronomical Spectra; and the omnispectra software (see CITATION.cff)."
)

__all__ = [
    "__version__",
    "__citation__",
    "OmniSpectraError",
    "InvalidSpectrumError",
    "SpectrumTypeError",
    "UnitsError",
    "SpectrumFormatError",
    "UnknownFormatError",
    "NotASpectrumError",
    "CorpusError",
    "CheckpointError",
]
