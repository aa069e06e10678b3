"""The ASGI layer every HTTP request passes: the API key, the body-size cap, the request's
log line and its count in the metrics. Written as plain ASGI (not BaseHTTPMiddleware) so that
streamed responses pass through untouched and a client's disconnection still reaches them."""

from __future__ import annotations

import hmac
import logging
import time
from typing import TYPE_CHECKING

from .errors import APIError, error_response
from .generation import RequestLog

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from .state import ServerState

log = logging.getLogger("metallic.server")

OPEN_PATHS = frozenset({"/health"})  # answered without the API key
# Endpoints counted by name in the metrics; anything else counts as "other".
ENDPOINTS = frozenset(
    {
        "/",
        "/health",
        "/metrics",
        "/tokenize",
        "/detokenize",
        "/v1/models",
        "/v1/completions",
        "/v1/chat/completions",
        "/api/version",
        "/api/tags",
        "/api/ps",
        "/api/show",
        "/api/generate",
        "/api/chat",
    }
)


class ServerMiddleware:
    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        path: str = scope["path"]
        entry = RequestLog()
        scope.setdefault("state", {})["metallic_log"] = entry
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            err = self._refuse(scope)
            if err is None and scope["method"] in ("POST", "PUT", "PATCH"):
                receive, err = await self._read_body(scope, receive)
                scope = _as_json(scope)
            if err is not None:
                await error_response(path, err)(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - t0
            self.state.metrics.request(path if path in ENDPOINTS else "other", status)
            log.info(
                "%s %s %d prompt=%d completion=%d %.3fs",
                scope["method"],
                path,
                status,
                entry.prompt_tokens,
                entry.completion_tokens,
                seconds,
            )

    def _refuse(self, scope: Scope) -> APIError | None:
        key = self.state.options.api_key
        if not key or scope["path"] in OPEN_PATHS:
            return None
        given = _header(scope, b"authorization")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode()):
            return None
        what = "no API key" if not given else "a wrong API key"
        return APIError(
            401,
            f"the request has {what}: send the header 'Authorization: Bearer KEY'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[Receive, APIError | None]:
        """Reads the whole body, refusing it (413) past the cap; returns a receive that replays
        it, then passes on the server's own messages (the disconnection)."""
        cap = self.state.options.max_body
        too_big = APIError(
            413,
            f"the request body is larger than the server's limit of {cap:,} bytes (serve "
            "--max-body)",
            code="request_too_large",
        )
        length = _header(scope, b"content-length")
        if length.isdigit() and int(length) > cap:
            return receive, too_big
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return _replay_then(message, receive), None  # the client went away
            body = message.get("body", b"")
            size += len(body)
            if size > cap:
                return receive, too_big
            chunks.append(body)
            if not message.get("more_body", False):
                break
        return _replay_then(
            {"type": "http.request", "body": b"".join(chunks), "more_body": False}, receive
        ), None


def _replay_then(first: Message, receive: Receive) -> Receive:
    pending = [first]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay


def _as_json(scope: Scope) -> Scope:
    """Every body this server takes is JSON: read it as JSON whatever its declared type, as
    Ollama does (``curl -d '{...}'`` sends application/x-www-form-urlencoded)."""
    kind = _header(scope, b"content-type").split(";")[0].strip().lower()
    if kind == "application/json" or kind.endswith("+json"):
        return scope
    headers = [(k, v) for k, v in scope.get("headers", ()) if k.lower() != b"content-type"]
    return {**scope, "headers": [*headers, (b"content-type", b"application/json")]}


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""
