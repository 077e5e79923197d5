"""Shadow traffic: copies of sampled requests sent to a candidate version in the background,
their answers paired with the primary's and written to a bounded sink. Never on the
request path: see ``runner`` for the isolation rules."""
