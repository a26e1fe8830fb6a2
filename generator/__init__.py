"""torch-scaffold: a Copier template for deep-learning projects, and the `scaffold` command."""

__version__ = "0.1.0"
