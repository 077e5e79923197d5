"""Eval suites: cases beside the prompt files, the assertions on their answers."""
