"""The package version, here so every layer can name it without importing the front end."""

__version__ = "0.1.0"
