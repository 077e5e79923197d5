"""Eval suites, runs and gates (issue 11)."""
