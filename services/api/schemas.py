"""Request bodies of the HTTP interface, validated strictly (a string is not a bool)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from services.config import MODEL_NAME_RE, SESSION_ID_RE

SessionId = Annotated[str, Field(pattern=SESSION_ID_RE.pattern, max_length=128)]
ModelId = Annotated[str, Field(pattern=MODEL_NAME_RE.pattern, max_length=128)]


class _Open(BaseModel):
    """Unknown keys are kept and forwarded (temperature, tools, ...): providers judge them."""

    model_config = ConfigDict(extra="allow", strict=True)


class ChatMessage(_Open):
    """One chat message in OpenAI shape."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(_Open):
    """OpenAI's stream options."""

    include_usage: bool = False


class ChatCompletionRequest(_Open):
    """``POST /v1/chat/completions``: the OpenAI request; `model` is a model or chain name
    (without one, as in seed 004's example: the session's pin, else the new-session default)."""

    model: ModelId | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)


class SessionChatRequest(_Open):
    """``POST /chat_completions``: a session's turn, as one `message` or full `messages`."""

    session_id: SessionId
    message: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    model: ModelId | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)

    @model_validator(mode="after")
    def _one_of_message_or_messages(self) -> SessionChatRequest:
        if (self.message is None) == (self.messages is None):
            raise ValueError("give exactly one of 'message' (a string) or 'messages' (a list)")
        return self


class InitiateCallRequest(BaseModel):
    """``POST /initiate_call``: optional id to (re)pin and optional model or chain."""

    model_config = ConfigDict(extra="forbid", strict=True)

    session_id: SessionId | None = None
    model: ModelId | None = None


CHAT_COMPLETION = TypeAdapter(ChatCompletionRequest)
SESSION_CHAT = TypeAdapter(SessionChatRequest)
INITIATE_CALL = TypeAdapter(InitiateCallRequest)
