"""Errors as the clients expect them: OpenAI's ``{"error": {"message", "type", "param",
"code"}}`` everywhere except under /api/, where Ollama's clients read ``{"error": "message"}``.

Every failure reaches the client through one of the handlers registered here, with its status:
400 for a bad request (validation, a bad sampler setting, a prompt too long for the context),
401 for a missing or wrong API key, 404 for an unknown route or model, 413 for a body over the
cap, 503 (with Retry-After) while the model loads or when the queue is full, 500 for a bug.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..chat_template import ChatTemplateError
from ..errors import InternalError, MetallicError, RequestError
from ..scheduler import QueueFull, SchedulerClosed

log = logging.getLogger("metallic.server")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """An error answer: HTTP status, message, and OpenAI's param and code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def openai_body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": _TYPES.get(
                    self.status, "server_error" if self.status >= 500 else "invalid_request_error"
                ),
                "param": self.param,
                "code": self.code,
            }
        }

    def ollama_body(self) -> dict[str, Any]:
        return {"error": self.message}


def is_ollama_path(path: str) -> bool:
    return path.startswith("/api/")


def error_response(path: str, err: APIError) -> JSONResponse:
    body = err.ollama_body() if is_ollama_path(path) else err.openai_body()
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def as_api_error(exc: BaseException) -> APIError:
    """The answer for an exception raised while serving a request."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, QueueFull):
        retry = str(max(1, round(exc.retry_after)))
        return APIError(503, str(exc), code="queue_full", headers={"Retry-After": retry})
    if isinstance(exc, SchedulerClosed):
        return APIError(503, str(exc), code="shutting_down", headers={"Retry-After": "5"})
    if isinstance(exc, (RequestError, ChatTemplateError)):
        return APIError(400, str(exc), param=_param_of(str(exc)), code="invalid_request")
    if isinstance(exc, InternalError):
        return APIError(500, str(exc), code="internal_error")
    if isinstance(exc, MetallicError):  # the model produced NaN, ...
        return APIError(500, str(exc), code="model_error")
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error")


def _param_of(message: str) -> str | None:
    # SamplerSettings.validate names its field: "sampler setting top_p must be ..."
    prefix = "sampler setting "
    if message.startswith(prefix):
        return message[len(prefix) :].split()[0]
    return None


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return error_response(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request.url.path, validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
            err = APIError(404, message, code="not_found")
        else:
            err = APIError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))
        return error_response(request.url.path, err)

    @app.exception_handler(MetallicError)
    async def _metallic(request: Request, exc: MetallicError) -> JSONResponse:
        return error_response(request.url.path, as_api_error(exc))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error serving %s %s", request.method, request.url.path)
        return error_response(request.url.path, as_api_error(exc))


def validation_error(exc: RequestValidationError) -> APIError:
    """FastAPI's 422 as OpenAI's 400, naming the first offending field."""
    errors = exc.errors()
    if not errors:
        return APIError(400, "invalid request body")
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    if first.get("type") == "json_invalid":
        return APIError(400, f"the body is not valid JSON: {msg}", code="invalid_json")
    where = f"{param}: " if param else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return APIError(400, f"{where}{msg}{more}", param=param, code="invalid_value")
