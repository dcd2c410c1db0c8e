"""Experiments: the resumable comparison runner, its results file, and the paper's tables and figure."""
from .compare import Comparison, RunSpec, compare, plan
from .report import write_reports
from .results import append_result, read_results
from .tables import csv_table, markdown_table, summarize

__all__ = ["Comparison", "RunSpec", "compare", "plan", "write_reports", "append_result", "read_results", "csv_table", "markdown_table", "summarize"]
