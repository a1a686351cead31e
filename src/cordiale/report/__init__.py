"""Reports and plots of study results."""

from cordiale.report.curves import plot_learning_curve

__all__ = ["plot_learning_curve"]
