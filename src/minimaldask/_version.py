"""The version of minimaldask."""

__version__ = "0.1.0"
