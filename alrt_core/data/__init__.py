"""Data: documents, the embedded corpus, the tokenizer and its byte accounting, shards, dataset preparation."""
