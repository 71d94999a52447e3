"""Sphinx configuration for sheepdog's documentation."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "Sheepdog"
author = "The Sheepdog developers"
copyright = "2026, The Sheepdog developers"
release = "0.1.0"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
autodoc_typehints = "description"
autodoc_member_order = "bysource"
html_theme = "alabaster"
exclude_patterns = ["_build"]
