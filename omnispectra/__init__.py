"""omnispectra: a native-resolution foundation model for astronomical spectra."""

try:
    from ._version import version as __version__
except ImportError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from .exceptions import (
    CheckpointError,
    ConfigError,
    CorpusError,
    InvalidSpectrumError,
    InvalidTemplatesError,
    MissingDependencyError,
    NonFiniteOutputError,
    NotASpectrumError,
    OmniSpectraError,
    OutputError,
    OutputExistsError,
    OutputIsInputError,
    SpectrumFormatError,
    SpectrumTypeError,
    TemplatesNotFoundError,
    UnitsError,
    UnknownFormatError,
)

__citation__ = (
    "Islam, M. K. & Fox, J., OmniSpectra: A Unified Foundation Model for Native "
    "Resolution Astronomical Spectra; and the omnispectra software (see CITATION.cff)."
)

# The paper's text gives no venue, year or identifier, so the entry holds what it does give.
__bibtex__ = """\
@misc{islam_fox_omnispectra,
  author = {Islam, Md Khairul and Fox, Judy},
  title  = {{OmniSpectra}: A Unified Foundation Model for Native Resolution Astronomical Spectra},
  note   = {Software: omnispectra, https://github.com/omnispectra/omnispectra}
}
"""

__all__ = [
    "__version__",
    "__citation__",
    "__bibtex__",
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
    "embed",
    "reconstruct",
    "anomaly_score",
    "anomaly_statistic",
    "load_model",
    "list_models",
    "tokenize",
    "read",
    "classify",
    "predict_stellar_parameters",
    "predict_redshift",
    "wavelength_support",
]

# The public functions live in submodules that import torch, specutils or astropy; they are
# imported on first use (PEP 562) so that ``import omnispectra`` stays light.
_LAZY_FUNCTIONS = {
    "embed": "api",
    "reconstruct": "api",
    "anomaly_score": "api",
    "anomaly_statistic": "api",
    "load_model": "pretrained",
    "list_models": "pretrained",
    "tokenize": "tokenizer",
    "read": "io",
    "classify": "api",
    "predict_stellar_parameters": "api",
    "predict_redshift": "api",
    "wavelength_support": "runtime",
}
_LAZY_MODULES = {"api", "collate", "examples", "fileio", "inputs", "io", "masking", "model",
                 "plotting", "pretrained", "probes", "results", "runtime", "spectrum", "tokenizer"}


def __getattr__(name: str):
    import importlib

    if name in _LAZY_FUNCTIONS:
        module = importlib.import_module(f".{_LAZY_FUNCTIONS[name]}", __name__)
        value = getattr(module, name)
    elif name in _LAZY_MODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | _LAZY_MODULES)
