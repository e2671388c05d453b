# Sphinx configuration for omnispectra (sphinx-astropy, built offline).
import datetime

from sphinx_astropy.conf.v2 import *  # noqa: F401,F403

import omnispectra

project = "omnispectra"
author = "The omnispectra developers"
copyright = f"{datetime.date.today().year}, {author}"
version = release = omnispectra.__version__

extensions += ["sphinx.ext.napoleon"]  # noqa: F405  (numpy-style docstrings)
# Offline builds: no inventories are fetched, so nothing warns without a network.
intersphinx_mapping = {}
nitpicky = False
automodapi_toctreedirnm = "api"
automodsumm_inherited_members = False
html_theme_options = {"github_url": "https://github.com/omnispectra/omnispectra"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
