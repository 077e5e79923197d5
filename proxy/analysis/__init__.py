"""Automated rollout analysis: pooled per-arm statistics, verdicts, and the analyser
that acts on them."""
