"""Numerical oracle: tiny random transformers models, their GGUF files, reference outputs."""
