"""filterdb: a data warehouse of trained 3x3 convolution filters."""

__version__ = "0.1.0"
