"""Chat backends: any OpenAI-compatible endpoint (with its cache), a local transformers VLM, and the choice between
them."""
