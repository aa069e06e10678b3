"""The OpenAI-compatible API: /v1/models, /v1/completions, /v1/chat/completions, streamed as
server-sent events (``data: {chunk}`` frames, then ``data: [DONE]``) or answered whole."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from fastapi import Request as HTTPRequest
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from ..scheduler import Finish, Request, TokenEvent
from . import generation as gen
from .errors import APIError, as_api_error
from .openai_schema import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    TokenLogprob,
    TopLogprob,
    Usage,
    _Sampling,
)

if TYPE_CHECKING:
    from ..model import Model
    from .state import ServerState

router = APIRouter()


def _state(request: HTTPRequest) -> ServerState:
    return request.app.state.metallic


# -- models ------------------------------------------------------------------------------------


def _card(state: ServerState) -> ModelCard:
    model, _ = state.ready()
    return ModelCard(id=state.name, created=int(os.stat(model.path).st_mtime))


@router.get("/v1/models")
async def list_models(request: HTTPRequest) -> ModelList:
    return ModelList(data=[_card(_state(request))])


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: HTTPRequest) -> ModelCard:
    state = _state(request)
    state.ready()
    state.check_model(model_id)
    return _card(state)


# -- chat completions --------------------------------------------------------------------------


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: HTTPRequest
) -> ChatCompletion | StreamingResponse:
    state = _state(request)
    model, _ = state.ready()
    state.check_model(body.model)
    if body.tools:
        raise APIError(400, "tools are not supported by this server", param="tools")
    if body.top_logprobs and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    messages = [m.for_template(i) for i, m in enumerate(body.messages)]
    ids = await gen.chat_ids(state, model, messages)
    limit = body.max_completion_tokens
    if limit is None:
        limit = body.max_tokens
    req = await _request(state, model, body, ids, limit, bool(body.logprobs), body.top_logprobs)
    sub = gen.submit(state, request, req)
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    if body.stream:
        return _sse(_chat_stream(state, model, sub, rid, _include_usage(body)))
    events, finish = await gen.collect(sub, request)
    logprobs = None
    if body.logprobs:
        logprobs = ChoiceLogprobs(content=[_token_logprob(model, e) for e in events if e.logprob])
    return ChatCompletion(
        id=rid,
        created=sub.created,
        model=state.name,
        choices=[
            ChatChoice(
                message=AssistantMessage(content="".join(e.text for e in events)),
                logprobs=logprobs,
                finish_reason=gen.finish_reason(finish),
            )
        ],
        usage=_usage(sub, finish),
    )


async def _chat_stream(
    state: ServerState, model: Model, sub: gen.Submitted, rid: str, include_usage: bool
) -> AsyncIterator[str]:
    def chunk(delta: dict[str, str], **kw: Any) -> ChatCompletionChunk:
        choice = ChatChunkChoice(delta=delta, **kw)
        return ChatCompletionChunk(id=rid, created=sub.created, model=state.name, choices=[choice])

    yield _data(chunk({"role": "assistant", "content": ""}), include_usage)
    try:
        async for e in gen.events(sub):
            logprobs = None
            if e.logprob is not None:
                logprobs = ChoiceLogprobs(content=[_token_logprob(model, e)])
            if e.text or logprobs:
                yield _data(chunk({"content": e.text}, logprobs=logprobs), include_usage)
    except Exception as exc:  # noqa: BLE001 - the status is sent: report in the stream
        yield _error(exc)
        return
    finish = sub.stream.finish
    assert finish is not None
    yield _data(chunk({}, finish_reason=gen.finish_reason(finish)), include_usage)
    if include_usage:
        last = ChatCompletionChunk(
            id=rid, created=sub.created, model=state.name, choices=[], usage=_usage(sub, finish)
        )
        yield _data(last, True)
    yield "data: [DONE]\n\n"


def _token_logprob(model: Model, e: TokenEvent) -> TokenLogprob:
    assert e.logprob is not None
    text, raw = gen.token_piece(model, e.id)
    top = []
    for i, lp in e.logprob.top:
        t, b = gen.token_piece(model, i)
        top.append(TopLogprob(token=t, logprob=lp, bytes=b))
    return TokenLogprob(token=text, logprob=e.logprob.logprob, bytes=raw, top_logprobs=top)


# -- completions -------------------------------------------------------------------------------


@router.post("/v1/completions", response_model=None)
async def completions(
    body: CompletionRequest, request: HTTPRequest
) -> Completion | StreamingResponse:
    state = _state(request)
    model, _ = state.ready()
    state.check_model(body.model)
    if body.suffix:
        raise APIError(400, "suffix (fill-in-the-middle) is not supported", param="suffix")
    if body.best_of not in (None, 1):
        raise APIError(400, "only best_of=1 is supported", param="best_of")
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        if len(prompt) != 1:
            raise APIError(
                400, "one prompt per request: batches of prompts are not supported", param="prompt"
            )
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = await gen.text_ids(model, prompt)
    else:
        ids = list(prompt)  # token ids, checked by the scheduler
    echo = ""
    if body.echo:
        echo = prompt if isinstance(prompt, str) else model.detokenize(ids)
    n_top = body.logprobs
    req = await _request(state, model, body, ids, body.max_tokens, n_top is not None, n_top)
    sub = gen.submit(state, request, req)
    rid = f"cmpl-{uuid.uuid4().hex}"
    if body.stream:
        return _sse(_completion_stream(state, model, sub, rid, echo, _include_usage(body)))
    events, finish = await gen.collect(sub, request)
    text = "".join(e.text for e in events)
    logprobs = _completion_logprobs(model, events, len(echo)) if n_top is not None else None
    return Completion(
        id=rid,
        created=sub.created,
        model=state.name,
        choices=[
            CompletionChoice(
                text=echo + text,
                logprobs=logprobs,
                finish_reason=gen.finish_reason(finish),
            )
        ],
        usage=_usage(sub, finish),
    )


async def _completion_stream(
    state: ServerState, model: Model, sub: gen.Submitted, rid: str, echo: str, include_usage: bool
) -> AsyncIterator[str]:
    def chunk(text: str, **kw: Any) -> Completion:
        choice = CompletionChoice(text=text, **kw)
        return Completion(id=rid, created=sub.created, model=state.name, choices=[choice])

    offset = len(echo)
    if echo:
        yield _data(chunk(echo), include_usage)
    try:
        async for e in gen.events(sub):
            logprobs = None
            if e.logprob is not None:
                logprobs = _completion_logprobs(model, [e], offset)
            offset += len(e.text)
            if e.text or logprobs:
                yield _data(chunk(e.text, logprobs=logprobs), include_usage)
    except Exception as exc:  # noqa: BLE001 - the status is sent: report in the stream
        yield _error(exc)
        return
    finish = sub.stream.finish
    assert finish is not None
    yield _data(chunk("", finish_reason=gen.finish_reason(finish)), include_usage)
    if include_usage:
        last = Completion(
            id=rid, created=sub.created, model=state.name, choices=[], usage=_usage(sub, finish)
        )
        yield _data(last, True)
    yield "data: [DONE]\n\n"


def _completion_logprobs(model: Model, events: list[TokenEvent], offset: int) -> CompletionLogprobs:
    out = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    for e in events:
        if e.logprob is None:
            offset += len(e.text)
            continue
        out.tokens.append(gen.token_piece(model, e.id)[0])
        out.token_logprobs.append(e.logprob.logprob)
        out.top_logprobs.append({gen.token_piece(model, i)[0]: lp for i, lp in e.logprob.top})
        out.text_offset.append(offset)
        offset += len(e.text)
    return out


# -- shared ------------------------------------------------------------------------------------


async def _request(
    state: ServerState,
    model: Model,
    body: _Sampling,
    ids: list[int],
    limit: int | None,
    logprobs: bool,
    top_logprobs: int | None,
) -> Request:
    if body.n not in (None, 1):
        raise APIError(
            400, f"only n=1 is supported (one choice per request), got n={body.n}", param="n"
        )
    settings = gen.sampler_settings(
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        repeat_penalty=body.repeat_penalty,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        seed=None if body.seed is None else body.seed % 2**64,
    )
    constraint = None
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_object":
        constraint = await gen.json_constraint(model, None, "response_format")
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise APIError(
                400,
                "response_format json_schema needs json_schema.schema",
                param="response_format.json_schema",
            )
        constraint = await gen.json_constraint(model, fmt.json_schema.schema_, "response_format")
    return Request(
        prompt=ids,
        max_tokens=gen.max_tokens(state, limit),
        sampler=settings,
        stop=gen.stop_list(body.stop),
        logprobs=logprobs,
        top_logprobs=top_logprobs or 0,
        constraint=constraint,
    )


def _include_usage(body: _Sampling) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


def _usage(sub: gen.Submitted, finish: Finish) -> Usage:
    s = finish.stats
    return Usage(
        prompt_tokens=len(sub.prompt),
        completion_tokens=s.completion_tokens,
        total_tokens=len(sub.prompt) + s.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=s.cached_tokens),
    )


def _sse(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _data(chunk: BaseModel, include_usage: bool) -> str:
    exclude = None if include_usage else {"usage"}
    return f"data: {chunk.model_dump_json(exclude=exclude)}\n\n"


def _error(exc: BaseException) -> str:
    return f"data: {json.dumps(as_api_error(exc).openai_body())}\n\n"
