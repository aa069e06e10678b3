"""The exceptions Metallic raises: one class per kind of failure, the same four kinds on both
sides of the binding (cpp/engine/error.h names the C++ ones; cpp/bindings.cpp maps each to the
class here, in one place).

    GGUFError       the file is malformed             (C++ BadFile)
    ModelError      a well-formed file we cannot run  (C++ Unsupported)
    RequestError    a bad request or argument         (C++ BadRequest)
      ContextError    ... that does not fit the context (C++ ContextFull)
    InternalError   a bug in Metallic                 (any other C++ exception)

The first three (and chat_template.ChatTemplateError, a template that is missing, malformed,
hostile or over its budget) are also ValueErrors: the input was wrong. ModelBusyError, a
RequestError, is a call from the thread whose unfinished generate() holds the model. Every
message names the file, field, tensor or value at fault. An InternalError is a RuntimeError and
says it is a bug.
"""

from __future__ import annotations


class MetallicError(Exception):
    """Base class of every error Metallic raises."""


class GGUFError(MetallicError, ValueError):
    """A GGUF file is malformed: bad magic, truncated, out-of-bounds tensor, bad field."""


class ModelError(MetallicError, ValueError):
    """A well-formed file describes a model we cannot run: unknown architecture, unsupported
    tensor type, missing tensor, wrong shape, inconsistent or absurd hyper-parameters."""


class RequestError(MetallicError, ValueError):
    """A request or argument is wrong: an unknown backend, a bad option value, token ids that
    are not integers, a cache position that does not exist."""


class ContextError(RequestError):
    """A request does not fit the context: a prompt longer than it, or more tokens than the
    cache has room for at its position."""


class ModelBusyError(RequestError):
    """This thread called a model that an unfinished generate() of its own holds (the call
    would wait for itself forever): finish or close() the generator first."""


class InternalError(MetallicError, RuntimeError):
    """Metallic itself failed: a bug (please report it with the message), never bad input."""

    def __init__(self, message: str) -> None:
        if "bug" not in message:
            message = f"internal error (a bug in metallic, please report it): {message}"
        super().__init__(message)
