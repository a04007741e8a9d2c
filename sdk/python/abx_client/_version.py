"""The package version, in one place (the package and the exposure batches name it)."""

__version__ = "0.1.0"
