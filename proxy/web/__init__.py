"""aiohttp wiring: apps, thin handlers, the error middleware."""
