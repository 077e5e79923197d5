"""Benchmark harness: promptproxy against a direct connection and a minimal pass-through."""
