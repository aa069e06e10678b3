"""Operations: /health (no API key needed), /metrics (Prometheus), /tokenize, /detokenize."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from .errors import APIError
from .metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from .state import ServerState

router = APIRouter()


def _state(request: HTTPRequest) -> ServerState:
    return request.app.state.metallic


@router.get("/health")
async def health(request: HTTPRequest) -> JSONResponse:
    """200 once the model serves; 503 while it loads; 500 if it failed to load."""
    state = _state(request)
    if state.load_error is not None:
        return JSONResponse({"status": "error", "error": str(state.load_error)}, 500)
    if state.scheduler is None:
        return JSONResponse({"status": "loading"}, 503, headers={"Retry-After": "1"})
    s = state.scheduler
    return JSONResponse(
        {
            "status": "ok",
            "model": state.name,
            "slots": s.n_slots,
            "slots_in_use": s.slots_in_use,
            "queue_depth": s.queue_depth,
            "n_ctx": s.n_ctx,
        }
    )


@router.get("/metrics")
async def metrics(request: HTTPRequest) -> Response:
    return Response(_state(request).metrics.render(), media_type=CONTENT_TYPE)


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    content: str
    add_special: bool = False  # add BOS as for a prompt (llama.cpp's server default: no)
    parse_special: bool = True  # "<|im_end|>" in the text is the control token


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    tokens: list[int]


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: HTTPRequest) -> dict[str, Any]:
    model, _ = _state(request).ready()
    tokens = await run_in_threadpool(
        model.tokenize, body.content, body.add_special, body.parse_special
    )
    return {"tokens": tokens}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: HTTPRequest) -> dict[str, Any]:
    model, _ = _state(request).ready()
    n = model.tokenizer.vocab_size
    bad = [t for t in body.tokens if not 0 <= t < n]
    if bad:
        raise APIError(400, f"token id {bad[0]} is outside the vocabulary of {n}", param="tokens")
    return {"content": model.detokenize(body.tokens)}
