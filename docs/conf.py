# Sphinx configuration for omnispectra (sphinx-astropy, built offline).
# ruff: star import of the sphinx-astropy defaults and late imports are fine here (see
# the per-file ignores in pyproject.toml).
import datetime
import os
import tempfile

from sphinx_astropy.conf.v2 import *

import omnispectra

project = "omnispectra"
author = "The omnispectra developers"
copyright = f"{datetime.date.today().year}, {author}"
version = release = omnispectra.__version__

# napoleon: numpy-style docstrings; sphinx_click: the CLI reference, generated from the
# click commands so that it cannot drift from the code
extensions += ["sphinx.ext.napoleon", "sphinx_click"]
# Offline builds: no inventories are fetched, so nothing warns without a network.
intersphinx_mapping = {}
nitpicky = False
automodapi_toctreedirnm = "api"
automodsumm_inherited_members = False
html_theme_options = {"github_url": "https://github.com/omnispectra/omnispectra"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

# ``.. plot::`` (matplotlib's plot directive, enabled by sphinx-astropy) runs the tutorial
# code during the build, so the figures always come from the current code.
plot_include_source = True
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 110)]
plot_pre_code = "import numpy as np\nimport matplotlib.pyplot as plt\n"

# The tutorials use the "default" model. Until trained weights are bundled with the
# package, the docs are built with an untrained tiny model (figures then show what an
# untrained encoder does) and pages say so through the ``untrained_default`` tag.
from omnispectra import pretrained

if not pretrained.bundled_weights_path().is_file() and not os.environ.get("OMNISPECTRA_DEFAULT_MODEL"):
    import torch

    from omnispectra.model import OmniSpectra, OmniSpectraConfig

    torch.manual_seed(0)
    _weights = os.path.join(tempfile.mkdtemp(prefix="omnispectra-docs-"), "untrained-tiny.safetensors")
    pretrained.save_weights(OmniSpectra(OmniSpectraConfig.from_preset("tiny")), _weights,
                            info={"note": "untrained, for building the docs"})
    os.environ["OMNISPECTRA_DEFAULT_MODEL"] = _weights
    tags.add("untrained_default")  # noqa: F821 (Sphinx provides ``tags`` to conf.py)
