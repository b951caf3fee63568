"""Running a model: KV-cached decoding and sampling, chat sessions, and the HTTP server."""
