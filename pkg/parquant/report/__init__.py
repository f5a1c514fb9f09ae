"""Comparison reports: rows from stage results (table.py), rendered as Markdown, JSON, HTML + plots."""

from .render import render_report
from .table import ComparisonRow, rows_from_results

__all__ = ["ComparisonRow", "render_report", "rows_from_results"]
