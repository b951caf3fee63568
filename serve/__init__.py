"""Serving a model: chat sessions, the model worker and the OpenAI-compatible HTTP server, over the core's
KV-cached decoding (`alrt_core.inference`)."""
