"""Ollama's API bodies (the subset served), as pydantic models. Durations are nanoseconds."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Options(_In):
    """Ollama's runtime options that map to the sampler; others (num_ctx, num_thread, ...)
    are the server's to choose and are ignored, as Ollama ignores unknown ones."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    num_predict: int | None = None  # -1: no limit (the context), -2: fill the context
    seed: int | None = None  # negative: random
    stop: str | list[str] | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class Message(_In):
    role: str
    content: str = ""
    images: list[Any] | None = None


class GenerateRequest(_In):
    model: str
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    stream: bool = True
    raw: bool = False
    format: str | dict[str, Any] | None = None
    options: Options | None = None
    images: list[Any] | None = None


class ChatRequest(_In):
    model: str
    messages: list[Message] = Field(default_factory=list)
    stream: bool = True
    format: str | dict[str, Any] | None = None
    options: Options | None = None
    tools: list[dict[str, Any]] | None = None


class ShowRequest(_In):
    model: str | None = None
    name: str | None = None  # older clients


class Details(BaseModel):
    parent_model: str = ""
    format: str = "gguf"
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str


class _Out(BaseModel):
    model: str
    created_at: str
    done: bool
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class GenerateChunk(_Out):
    response: str
    context: list[int] | None = None


class AssistantMessage(BaseModel):
    role: str = "assistant"
    content: str


class ChatChunk(_Out):
    message: AssistantMessage
