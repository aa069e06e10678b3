"""Conversations to prompt tokens: the chat template rendered under its budget, tokenized as
the model expects. Used by `generate --chat`, `chat`, and any program that builds messages."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .chat_template import METADATA_KEY, RenderBudget, choose_template, render_chat
from .errors import RequestError
from .generate import encode_prompt, prompt_byte_limit

if TYPE_CHECKING:
    from .model import Model


def has_chat_template(model: Model) -> bool:
    """Whether the model's file carries a chat template of its own. Files without one are
    usually base models: they continue text, and a borrowed template does not make them answer."""
    source = model.metadata.get(METADATA_KEY)
    return isinstance(source, str) and bool(source.strip())


def require_chat_model(model: Model, template: str | None, *, suggestion: str) -> None:
    """Refuses a conversation with a model that has no chat template of its own unless the
    caller gives one: a base model run through another model's turn format loops or repeats
    the prompt. ``suggestion`` says how to get an instruction-tuned model."""
    if template is None and not has_chat_template(model):
        raise RequestError(
            f"{model.path.name} has no chat template: it looks like a base model, which "
            f"continues text rather than answering. Chat with an instruct model ({suggestion}), "
            "or give a template with --chat-template if this one was tuned for chat"
        )


def chat_prompt_ids(
    model: Model, messages: list[dict[str, str]], template: str | None = None
) -> list[int]:
    """Renders the conversation with the chat template (``template``: a built-in name, a file
    or Jinja text; default the model's) and tokenizes it, adding BOS only when the model wants
    one and the template did not already write it."""
    tok = model.tokenizer
    source, origin = choose_template(model.metadata, template, model_path=model.path)
    bos = tok.id_to_token(tok.bos_id) if tok.bos_id is not None else ""
    eos = tok.id_to_token(tok.eos_id) if tok.eos_id is not None else ""
    # Rendering more characters than the context can hold bytes would only be refused after.
    budget = RenderBudget()
    limit = prompt_byte_limit(tok, model.n_ctx)
    if limit < budget.max_output:
        note = f"more than a context of {model.n_ctx:,} tokens can hold"
        budget = RenderBudget(max_output=limit, output_note=note)
    text = render_chat(
        source,
        messages,
        add_generation_prompt=True,
        bos_token=bos,
        eos_token=eos,
        origin=origin,
        budget=budget,
    )
    ids = encode_prompt(model, text, add_special=False, parse_special=True)
    if tok.add_bos and tok.bos_id is not None and (not ids or ids[0] != tok.bos_id):
        ids.insert(0, tok.bos_id)
    return ids
