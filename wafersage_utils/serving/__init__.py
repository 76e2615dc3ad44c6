"""Serving an exported model behind an OpenAI-compatible endpoint."""
