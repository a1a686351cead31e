"""Cordiale: federated learning and analytics for cross-border biomedical research alliances."""

__version__ = "0.1.0"
__all__ = ["__version__"]
