"""The request path, one module per stage; ``run.py`` writes down their order."""
