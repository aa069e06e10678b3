"""What the OpenAI and Ollama routes share: prompts (chat template or text) to token ids,
request parameters to a scheduler Request, and a submitted request's output, streamed or
collected, with the client's disconnection cancelling it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request as HTTPRequest
from starlette.concurrency import run_in_threadpool

from ..chat import chat_prompt_ids, require_chat_model
from ..generate import encode_prompt
from ..sampling import SamplerSettings
from ..scheduler import Finish, Request, Stream, TokenConstraint, TokenEvent
from .errors import APIError

if TYPE_CHECKING:
    from ..model import Model
    from .state import ServerState

_GET_INSTRUCT = "serve an instruction-tuned model, e.g. -m smollm2-135m-instruct"


@dataclass
class RequestLog:
    """Filled by a route, written by the middleware's log line when the response ends."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


def request_log(request: HTTPRequest) -> RequestLog:
    entry = request.scope.setdefault("state", {}).get("metallic_log")
    if entry is None:
        entry = RequestLog()
        request.scope["state"]["metallic_log"] = entry
    return entry


# -- prompts -----------------------------------------------------------------------------------


async def chat_ids(state: ServerState, model: Model, messages: list[dict[str, str]]) -> list[int]:
    """The conversation through the chat template (the --chat-template override, else the
    model's own; a model without one is a 400), tokenized."""
    template = state.options.chat_template
    require_chat_model(model, template, suggestion=_GET_INSTRUCT)
    return await run_in_threadpool(chat_prompt_ids, model, messages, template)


async def text_ids(model: Model, text: str) -> list[int]:
    """Raw text, tokenized as a prompt (BOS added when the model wants one)."""
    return await run_in_threadpool(encode_prompt, model, text)


# -- parameters --------------------------------------------------------------------------------


def sampler_settings(**values: Any) -> SamplerSettings:
    """SamplerSettings with the values the request gave (None: the engine's default, as
    llama.cpp's server does: temperature 0.8, top_k 40, top_p 0.95, min_p 0.05). A value out
    of range is a RequestError naming it (a 400)."""
    given = {k: v for k, v in values.items() if v is not None}
    return dataclasses.replace(SamplerSettings(), **given)


def max_tokens(state: ServerState, requested: int | None) -> int | None:
    """The request's max_tokens under the server's cap (None: until the context is full)."""
    cap = state.options.max_tokens
    if requested is None:
        return cap
    return requested if cap is None else min(requested, cap)


def stop_list(stop: str | Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


async def json_constraint(
    model: Model, schema: Mapping[str, Any] | None, param: str
) -> TokenConstraint:
    """A constraint keeping the output JSON (valid for ``schema``; None: any object)."""
    try:
        from ..constrain import json_constraint as make
    except ImportError as e:  # constrain.py absent from this installation
        raise APIError(400, f"{param}: constrained JSON output is not available: {e}") from e
    try:
        return await run_in_threadpool(make, model.tokenizer, schema, n_vocab=model.n_vocab)
    except ImportError as e:  # llguidance missing
        raise APIError(400, f"{param}: {e}", param=param) from e


@dataclass
class Submitted:
    """A request in the scheduler, with what the response needs besides its tokens."""

    stream: Stream
    prompt: list[int]
    log: RequestLog
    created: int
    events: list[TokenEvent] = field(default_factory=list)


def submit(state: ServerState, http: HTTPRequest, request: Request) -> Submitted:
    """Queues the request (QueueFull is answered 503 by errors.py) and notes its prompt size
    for the request's log line."""
    _, scheduler = state.ready()
    stream = scheduler.submit(request)
    entry = request_log(http)
    entry.prompt_tokens = len(request.prompt)
    return Submitted(stream, list(request.prompt), entry, int(time.time()))


# -- output ------------------------------------------------------------------------------------


async def events(sub: Submitted) -> AsyncIterator[TokenEvent]:
    """The stream's events; leaving early (the client went away: the response's task is
    cancelled, or the generator closed) cancels the request, which frees its slot."""
    try:
        async for event in sub.stream:
            sub.log.completion_tokens = sub.stream.stats.completion_tokens
            yield event
    finally:
        sub.stream.cancel()
        sub.log.completion_tokens = sub.stream.stats.completion_tokens


async def collect(sub: Submitted, http: HTTPRequest) -> tuple[list[TokenEvent], Finish]:
    """All of a request's events, for a response that is not streamed; the request is
    cancelled if the client disconnects meanwhile."""

    async def watch() -> None:
        while True:
            message = await http.receive()
            if message["type"] == "http.disconnect":
                sub.stream.cancel()
                return

    watcher = asyncio.create_task(watch())
    try:
        out = [e async for e in events(sub)]
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
    assert sub.stream.finish is not None
    return out, sub.stream.finish


def finish_reason(finish: Finish) -> str:
    return "length" if finish.reason == "length" else "stop"


def token_piece(model: Model, token_id: int) -> tuple[str, list[int]]:
    """A token's text (invalid UTF-8 replaced) and its bytes, for logprobs."""
    piece = model.tokenizer.token_to_piece(token_id)
    return piece.decode("utf-8", "replace"), list(piece)
