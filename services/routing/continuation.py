"""Continuing a stream that broke after part of the answer reached the client (pure functions).

Two ways to ask another deployment for the rest of an answer:

- **prefill**: the partial answer goes last, as an assistant message, and the model continues it
  (Anthropic, the simulator, and vLLM or llama.cpp servers configured with `supports_prefill`);
- **instruction**: the partial answer as an assistant message, then a user message asking to go
  on from exactly where it stopped. Models often repeat a few words (or restart the answer), so
  `OverlapFilter` removes what was already sent before anything reaches the client.
"""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]
CONTINUE_INSTRUCTION = (
    "Your previous answer was cut off. Continue it exactly where it stopped, without repeating "
    "anything already written and without any preamble."
)
# How much of the sent text an overlap is searched in, and the shortest overlap believed: a
# single shared space or letter is as likely chance as repetition.
OVERLAP_WINDOW = 200
MIN_OVERLAP = 3


def continuation_request(request: Json, sent_text: str, *, prefill: bool) -> Json:
    """The request that asks for the rest of `sent_text`, by prefill or by instruction."""
    messages = list(request.get("messages") or [])
    messages.append({"role": "assistant", "content": sent_text})
    if not prefill:
        messages.append({"role": "user", "content": CONTINUE_INSTRUCTION})
    return {**request, "messages": messages}


def overlap(sent: str, fresh: str) -> int:
    """How many leading characters of `fresh` repeat the end of `sent` (0 if fewer than
    MIN_OVERLAP); a restart of the whole answer counts as overlapping all of it."""
    if sent and fresh.startswith(sent):
        return len(sent)
    tail = sent[-OVERLAP_WINDOW:]
    for size in range(min(len(tail), len(fresh)), MIN_OVERLAP - 1, -1):
        if tail.endswith(fresh[:size]):
            return size
    return 0


class OverlapFilter:
    """Holds back the start of a continuation until the overlap with the sent text is known.

    `feed` returns what may go to the client now; `flush` what is left when the stream ends."""

    def __init__(self, sent: str) -> None:
        self._sent = sent
        self._held = ""
        self._decided = False
        # Enough to recognise a repeated tail, or a restart of (most of) the whole answer.
        self._need = min(len(sent), OVERLAP_WINDOW) + 1

    def feed(self, text: str) -> str:
        """Take the next piece of continuation text; answer the part that can be sent."""
        if self._decided:
            return text
        self._held += text
        held, sent = self._held, self._sent
        if len(held) <= len(sent) and sent.startswith(held):
            return ""  # maybe the model is restarting the answer: wait and see
        if not held.startswith(sent) and len(held) < self._need:
            return ""  # too little to tell a repeated tail from new text
        return self.flush()

    def flush(self) -> str:
        """Decide with what has arrived and release it."""
        if self._decided:
            return ""
        self._decided = True
        held, self._held = self._held, ""
        return held[overlap(self._sent, held) :]
