"""snapport: transportable, application-consistent shadow copies for Linux."""

__version__ = "0.1.0"

__all__ = ["__version__"]
