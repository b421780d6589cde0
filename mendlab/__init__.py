"""mendlab: a Jupyter-first course and toolkit for editing transformers with MEND."""

__version__ = "0.1.0"
