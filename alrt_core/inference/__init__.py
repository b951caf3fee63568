"""Inference: what decoding needs from a model (`Decoder`), KV-cached decoding (`Session`) and sampling."""
