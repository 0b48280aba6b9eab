"""Workflows: active learning, benchmark grids, reports."""
