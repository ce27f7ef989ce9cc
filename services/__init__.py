"""Fallback Routing: a self-hosted LLM gateway that stays up, fast, when providers fall over."""

__version__ = "0.1.0"
