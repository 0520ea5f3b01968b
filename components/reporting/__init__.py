"""Plots and the HTML report."""

from components.reporting.html import render_report
from components.reporting.plots import (
    COLORS,
    LABELS,
    meta_loss_figure,
    speedup_figure,
    task_curves_figure,
)

__all__ = ["render_report", "COLORS", "LABELS", "meta_loss_figure", "speedup_figure", "task_curves_figure"]
