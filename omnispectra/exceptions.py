"""Exception hierarchy of omnispectra.

Every error the package raises on bad input derives from :class:`OmniSpectraError`,
so ``except omnispectra.OmniSpectraError`` catches all of them, while each class also
derives from the matching builtin (``ValueError``, ``TypeError``, ``OSError``) so code
written against the builtins keeps working.
"""

__all__ = [
    "OmniSpectraError",
    "InvalidSpectrumError",
    "SpectrumTypeError",
    "UnitsError",
    "SpectrumFormatError",
    "UnknownFormatError",
    "NotASpectrumError",
    "CorpusError",
    "CheckpointError",
    "ConfigError",
    "OutputError",
    "OutputExistsError",
    "OutputIsInputError",
    "NonFiniteOutputError",
    "MissingDependencyError",
    "TemplatesNotFoundError",
    "InvalidTemplatesError",
    "CatalogueError",
]


class OmniSpectraError(Exception):
    """Base class of every error raised by omnispectra."""


class InvalidSpectrumError(OmniSpectraError, ValueError):
    """A spectrum's values cannot be used (NaN wavelengths, too few valid pixels, ...)."""


class SpectrumTypeError(OmniSpectraError, TypeError):
    """An input has the wrong type or shape (e.g. 2-D flux where 1-D is required)."""


class UnitsError(InvalidSpectrumError):
    """Units are missing or cannot be converted (e.g. a wavelength axis in pixels)."""


class SpectrumFormatError(OmniSpectraError, OSError):
    """A file cannot be read as a spectrum: missing, truncated, or lacking HDUs/columns."""


class UnknownFormatError(SpectrumFormatError):
    """No registered reader recognises a file."""


class NotASpectrumError(SpectrumFormatError):
    """A readable file that holds no sampled spectrum (a catalogue, redshift fits, ...)."""


class CorpusError(OmniSpectraError, OSError):
    """An HDF5 file is not an omnispectra corpus, or one of an unknown format version."""


class CheckpointError(OmniSpectraError, ValueError):
    """A weights file or checkpoint is corrupt or does not match its configuration."""


class ConfigError(OmniSpectraError, ValueError):
    """A settings file or value cannot be used (unreadable YAML, unknown key, wrong type)."""


class OutputError(OmniSpectraError, OSError):
    """An output path cannot be written without destroying data."""


class OutputExistsError(OutputError, FileExistsError):
    """The output already exists and overwriting it was not asked for."""


class OutputIsInputError(OutputError):
    """The output is one of the inputs (always refused, even with overwrite)."""


class NonFiniteOutputError(OmniSpectraError, ArithmeticError):
    """A model output (embedding, probability, prediction) is NaN or inf; it is never used."""


class MissingDependencyError(OmniSpectraError, ImportError):
    """An optional package is not installed; the message names the extra that installs it."""


class CatalogueError(OmniSpectraError, ValueError):
    """A catalogue cannot be inspected (missing columns, rows whose spectra cannot be found)."""


class TemplatesNotFoundError(OmniSpectraError, FileNotFoundError):
    """The template files asked for (a folder, ``$OMNISPECTRA_TEMPLATES``, the bundled set) are not there."""


class InvalidTemplatesError(OmniSpectraError, ValueError):
    """A template file is unreadable or degenerate (missing header keys, non-finite values,
    a basis of rank below its size, a wavelength axis that does not increase)."""
