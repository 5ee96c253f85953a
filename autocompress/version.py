"""The package version (one place: the facade, the card and the policy file read it)."""

__version__ = "0.1.0"
