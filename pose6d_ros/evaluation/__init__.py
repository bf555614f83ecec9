"""Evaluation: ADD(-S) and 2D-projection recall tables, BOP results CSV (Sec. 4)."""

from pose6d_ros.evaluation.tables import (
    BopEstimate,
    RecallTable,
    format_csv,
    format_markdown,
    load_bop_results,
    recall_table,
    save_bop_results,
)

__all__ = ["BopEstimate", "RecallTable", "format_csv", "format_markdown", "load_bop_results", "recall_table",
           "save_bop_results"]
