"""promptproxy: an OpenAI-compatible reverse proxy that gives LLM prompts a release lifecycle."""

__version__ = "0.1.0"
