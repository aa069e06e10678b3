"""The Ollama-compatible API: /, /api/version, /api/tags, /api/ps, /api/show, /api/generate,
/api/chat. Responses stream as NDJSON (one JSON object per line) unless ``"stream": false``,
as Ollama does; the last object has ``done: true``, ``done_reason`` and the timings."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from fastapi import Request as HTTPRequest
from fastapi.responses import PlainTextResponse, StreamingResponse

from .. import __version__
from ..chat import has_chat_template
from ..scheduler import Finish, Request
from . import generation as gen
from .errors import APIError, as_api_error
from .ollama_schema import (
    AssistantMessage,
    ChatChunk,
    ChatRequest,
    Details,
    GenerateChunk,
    GenerateRequest,
    Options,
    ShowRequest,
)

if TYPE_CHECKING:
    from ..model import Model
    from .state import ServerState

router = APIRouter()


def _state(request: HTTPRequest) -> ServerState:
    return request.app.state.metallic


@router.get("/", response_class=PlainTextResponse)
@router.head("/", response_class=PlainTextResponse)
async def root() -> str:
    return "Ollama is running"


@router.get("/api/version")
async def version() -> dict[str, str]:
    return {"version": __version__}


# -- models ------------------------------------------------------------------------------------


def _details(model: Model) -> Details:
    import gguf

    md = model.metadata
    try:
        quant = gguf.LlamaFileType(int(md["general.file_type"])).name.removeprefix("MOSTLY_")
    except (KeyError, ValueError):
        quant = "unknown"
    return Details(
        family=model.config.arch,
        families=[model.config.arch],
        parameter_size=_size(sum(t.n_elements for t in model.gguf.tensors.values())),
        quantization_level=quant,
    )


def _size(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}".replace(".0", "")
    return str(n)


def _modified(model: Model) -> str:
    return _timestamp(os.stat(model.path).st_mtime)


def _timestamp(t: float | None = None) -> str:
    stamp = datetime.fromtimestamp(time.time() if t is None else t, timezone.utc)
    return stamp.isoformat().replace("+00:00", "Z")


def _entry(state: ServerState, model: Model) -> dict[str, Any]:
    return {
        "name": state.name,
        "model": state.name,
        "modified_at": _modified(model),
        "size": os.stat(model.path).st_size,
        "digest": "",
        "details": _details(model).model_dump(),
    }


@router.get("/api/tags")
async def tags(request: HTTPRequest) -> dict[str, Any]:
    state = _state(request)
    model, _ = state.ready()
    return {"models": [_entry(state, model)]}


@router.get("/api/ps")
async def ps(request: HTTPRequest) -> dict[str, Any]:
    state = _state(request)
    model, scheduler = state.ready()
    entry = _entry(state, model) | {"expires_at": "0001-01-01T00:00:00Z", "size_vram": 0}
    return {"models": [entry | {"context_length": scheduler.n_ctx}]}


@router.post("/api/show")
async def show(body: ShowRequest, request: HTTPRequest) -> dict[str, Any]:
    state = _state(request)
    model, _ = state.ready()
    state.check_model(body.model or body.name)
    cfg = model.config
    arch = cfg.arch
    info: dict[str, Any] = {
        "general.architecture": arch,
        "general.parameter_count": sum(t.n_elements for t in model.gguf.tensors.values()),
        f"{arch}.context_length": cfg.n_ctx_train,
        f"{arch}.embedding_length": cfg.n_embd,
        f"{arch}.block_count": cfg.n_layer,
        f"{arch}.attention.head_count": cfg.n_head,
        f"{arch}.attention.head_count_kv": cfg.n_head_kv,
        f"{arch}.vocab_size": cfg.n_vocab,
    }
    for key in ("general.name", "general.basename", "general.size_label", "general.license"):
        if isinstance(model.metadata.get(key), str):
            info[key] = model.metadata[key]
    template = state.options.chat_template or model.metadata.get("tokenizer.chat_template") or ""
    return {
        "modelfile": f"FROM {model.path}\n",
        "parameters": "",
        "template": template if isinstance(template, str) else "",
        "details": _details(model).model_dump(),
        "model_info": info,
        "capabilities": ["completion"],
        "modified_at": _modified(model),
    }


# -- generation --------------------------------------------------------------------------------


@router.post("/api/generate", response_model=None)
async def generate(body: GenerateRequest, request: HTTPRequest) -> Any:
    state = _state(request)
    t0 = time.perf_counter()
    model, _ = state.ready()
    state.check_model(body.model)
    if body.images:
        raise APIError(400, "images are not supported by this model")
    if body.suffix:
        raise APIError(400, "suffix (fill-in-the-middle) is not supported")
    if body.template:
        raise APIError(400, "template overrides are not supported (serve --chat-template)")
    if not body.prompt and not body.context:
        # Ollama's way to load a model: an empty prompt answers at once.
        return _loaded(
            GenerateChunk(
                model=state.name,
                created_at=_timestamp(),
                response="",
                done=True,
                done_reason="load",
            ),
            body.stream,
        )
    use_template = not body.raw and (
        state.options.chat_template is not None or has_chat_template(model)
    )
    if use_template:
        messages = [{"role": "system", "content": body.system}] if body.system else []
        messages.append({"role": "user", "content": body.prompt})
        ids = await gen.chat_ids(state, model, messages)
    else:
        ids = await gen.text_ids(model, body.prompt) if body.prompt else []
    if body.context:
        # The previous exchange's ids (returned as "context"): the prompt continues it.
        bos = model.tokenizer.bos_id
        if ids and model.tokenizer.add_bos and ids[0] == bos:
            ids = ids[1:]
        ids = list(body.context) + ids
    req = await _request(state, model, body.options, body.format, ids)
    sub = gen.submit(state, request, req)

    def chunk(text: str) -> GenerateChunk:
        return GenerateChunk(model=state.name, created_at=_timestamp(), response=text, done=False)

    def final(finish: Finish, generated: list[int]) -> GenerateChunk:
        out = GenerateChunk(model=state.name, created_at=_timestamp(), response="", done=True)
        _fill_stats(out, finish, t0)
        out.context = sub.prompt + generated
        return out

    if body.stream:
        return _ndjson(_stream(sub, chunk, final))
    events, finish = await gen.collect(sub, request)
    out = final(finish, [e.id for e in events if e.id >= 0])
    out.response = "".join(e.text for e in events)
    return out.model_dump(exclude_none=True)


@router.post("/api/chat", response_model=None)
async def chat(body: ChatRequest, request: HTTPRequest) -> Any:
    state = _state(request)
    t0 = time.perf_counter()
    model, _ = state.ready()
    state.check_model(body.model)
    if body.tools:
        raise APIError(400, "tools are not supported by this server")
    if any(m.images for m in body.messages):
        raise APIError(400, "images are not supported by this model")
    if not body.messages:
        return _loaded(
            ChatChunk(
                model=state.name,
                created_at=_timestamp(),
                done=True,
                done_reason="load",
                message=AssistantMessage(content=""),
            ),
            body.stream,
        )
    ids = await gen.chat_ids(
        state, model, [{"role": m.role, "content": m.content} for m in body.messages]
    )
    req = await _request(state, model, body.options, body.format, ids)
    sub = gen.submit(state, request, req)

    def chunk(text: str) -> ChatChunk:
        return ChatChunk(
            model=state.name,
            created_at=_timestamp(),
            done=False,
            message=AssistantMessage(content=text),
        )

    def final(finish: Finish, generated: list[int]) -> ChatChunk:
        out = chunk("")
        out.done = True
        _fill_stats(out, finish, t0)
        return out

    if body.stream:
        return _ndjson(_stream(sub, chunk, final))
    events, finish = await gen.collect(sub, request)
    out = final(finish, [])
    out.message.content = "".join(e.text for e in events)
    return out.model_dump(exclude_none=True)


async def _stream(sub: gen.Submitted, chunk: Any, final: Any) -> AsyncIterator[str]:
    generated: list[int] = []
    try:
        async for e in gen.events(sub):
            if e.id >= 0:
                generated.append(e.id)
            if e.text:
                yield _line(chunk(e.text).model_dump(exclude_none=True))
    except Exception as exc:  # noqa: BLE001 - the status is sent: report in the stream
        yield _line(as_api_error(exc).ollama_body())
        return
    assert sub.stream.finish is not None
    yield _line(final(sub.stream.finish, generated).model_dump(exclude_none=True))


def _fill_stats(out: GenerateChunk | ChatChunk, finish: Finish, t0: float) -> None:
    s = finish.stats
    ns = 1_000_000_000
    out.done_reason = "length" if finish.reason == "length" else "stop"
    out.total_duration = int((s.finished - t0) * ns)
    out.load_duration = 0  # the model was loaded when the server started
    out.prompt_eval_count = s.prompt_tokens
    out.prompt_eval_duration = int(s.prompt_seconds * ns)
    out.eval_count = s.completion_tokens
    out.eval_duration = int(s.decode_seconds * ns)


async def _request(
    state: ServerState,
    model: Model,
    options: Options | None,
    fmt: str | dict[str, Any] | None,
    ids: list[int],
) -> Request:
    o = options or Options()
    settings = gen.sampler_settings(
        temperature=o.temperature,
        top_p=o.top_p,
        top_k=o.top_k,
        min_p=o.min_p,
        repeat_penalty=o.repeat_penalty,
        presence_penalty=o.presence_penalty,
        frequency_penalty=o.frequency_penalty,
        penalty_last_n=o.repeat_last_n,
        seed=o.seed if o.seed is not None and o.seed >= 0 else None,
    )
    constraint = None
    if fmt == "json":
        constraint = await gen.json_constraint(model, None, "format")
    elif isinstance(fmt, dict):
        constraint = await gen.json_constraint(model, fmt, "format")
    elif fmt not in (None, ""):
        raise APIError(400, f'format must be "json" or a JSON schema, got {fmt!r}')
    limit = o.num_predict if o.num_predict is None or o.num_predict >= 0 else None
    return Request(
        prompt=ids,
        max_tokens=gen.max_tokens(state, limit),
        sampler=settings,
        stop=gen.stop_list(o.stop),
        constraint=constraint,
    )


def _loaded(out: GenerateChunk | ChatChunk, stream: bool) -> Any:
    body = out.model_dump(exclude_none=True)
    if not stream:
        return body

    async def one() -> AsyncIterator[str]:
        yield _line(body)

    return _ndjson(one())


def _line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


def _ndjson(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(body, media_type="application/x-ndjson")
