# Sphinx configuration for omnispectra (sphinx-astropy, built offline).
import datetime
import os
import tempfile

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
from omnispectra import pretrained  # noqa: E402

if not pretrained.bundled_weights_path().is_file() and not os.environ.get("OMNISPECTRA_DEFAULT_MODEL"):
    import torch

    from omnispectra.model import OmniSpectra, OmniSpectraConfig

    torch.manual_seed(0)
    _weights = os.path.join(tempfile.mkdtemp(prefix="omnispectra-docs-"), "untrained-tiny.safetensors")
    pretrained.save_weights(OmniSpectra(OmniSpectraConfig.from_preset("tiny")), _weights,
                            info={"note": "untrained, for building the docs"})
    os.environ["OMNISPECTRA_DEFAULT_MODEL"] = _weights
    tags.add("untrained_default")  # noqa: F821 (Sphinx provides ``tags`` to conf.py)


# ``.. omnispectra-cli::`` writes the --help text of every command, so the CLI reference
# cannot drift from the code (sphinx-click is not a dependency).
from docutils import nodes  # noqa: E402
from docutils.parsers.rst import Directive  # noqa: E402


class OmniSpectraCliHelp(Directive):
    has_content = False

    def run(self):
        import click

        from omnispectra.cli import main

        sections = []

        def walk(command, names, parent):
            ctx = click.Context(command, info_name=names[-1], parent=parent,
                                terminal_width=90, max_content_width=90)
            title = " ".join(names)
            section = nodes.section(ids=[nodes.make_id("cli " + title)], names=[nodes.fully_normalize_name(title)])
            section += nodes.title(text=title)
            section += nodes.literal_block(text=command.get_help(ctx), language="text")
            self.state.document.note_implicit_target(section)
            sections.append(section)
            if isinstance(command, click.Group):
                for name in command.list_commands(ctx):
                    walk(command.get_command(ctx, name), [*names, name], ctx)

        walk(main, ["omnispectra"], None)
        return sections


def setup(app):
    app.add_directive("omnispectra-cli", OmniSpectraCliHelp)
