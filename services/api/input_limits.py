"""Limits on what a chat request may carry (SPEC §10), checked before anything is routed.

The body size is the middleware's (413); here: the number of messages, the characters of
content per message, and NUL characters, which no model needs and which some upstreams and
log pipelines mishandle.
"""

from __future__ import annotations

from typing import Any

from services.errors import InvalidRequest, PayloadTooLarge


def content_text(content: Any) -> list[str]:
    """The strings of a message's content: a string, or the text of its parts."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        ]
    return []


def check_messages(messages: list[Any], *, max_messages: int, max_content_chars: int) -> None:
    """Raise the 4xx a client should see for messages over the limits."""
    if len(messages) > max_messages:
        raise InvalidRequest(
            f"too many messages: {len(messages)} (at most {max_messages})",
            code="too_many_messages",
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            continue  # the schema check reports it
        texts = content_text(message.get("content"))
        if sum(len(t) for t in texts) > max_content_chars:
            raise PayloadTooLarge(
                f"messages[{index}].content is longer than {max_content_chars} characters",
            )
        if any("\x00" in t for t in texts):
            raise InvalidRequest(
                f"messages[{index}].content contains a NUL character", code="invalid_content"
            )
