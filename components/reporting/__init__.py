"""Figures and the HTML page of the report stage (matplotlib and the standard library only)."""

from components.reporting.html import render_report
from components.reporting.plots import (
    COLORS,
    LABELS,
    aggregate_figure,
    algoperf_figure,
    display_order,
    long_horizon_figure,
    meta_loss_figure,
    optimizer_style,
    performance_profile_figure,
    speedup_figure,
    task_curves_figure,
)

__all__ = [
    "render_report",
    "COLORS",
    "LABELS",
    "display_order",
    "optimizer_style",
    "aggregate_figure",
    "algoperf_figure",
    "performance_profile_figure",
    "task_curves_figure",
    "long_horizon_figure",
    "speedup_figure",
    "meta_loss_figure",
]
