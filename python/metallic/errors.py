"""The exceptions Metallic raises for bad input. All are ValueErrors with a message that names
the file and the field, tensor or value at fault."""

from __future__ import annotations


class MetallicError(ValueError):
    """Base class of every error Metallic raises for bad input."""


class GGUFError(MetallicError):
    """A GGUF file is malformed: bad magic, truncated, out-of-bounds tensor, bad field."""


class ModelError(MetallicError):
    """A well-formed file describes a model we cannot run: unknown architecture, unsupported
    tensor type, missing tensor, wrong shape, inconsistent hyper-parameters."""


class ContextError(MetallicError):
    """A request does not fit: prompt longer than the context, token id outside the vocabulary."""
