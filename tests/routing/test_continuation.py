"""Continuing a broken stream: the continuation request and the overlap filter (pure)."""

from __future__ import annotations

from services.api.streaming import Relay
from services.routing.continuation import (
    CONTINUE_INSTRUCTION,
    OverlapFilter,
    continuation_request,
    overlap,
)
from services.routing.outcomes import RoutedStream
from services.routing.tiers import ReplayedStream

REQUEST = {"model": "m", "messages": [{"role": "user", "content": "q"}], "temperature": 0}


def feed_all(sent: str, pieces: list[str]) -> str:
    flt = OverlapFilter(sent)
    return "".join(flt.feed(p) for p in pieces) + flt.flush()


def test_prefill_puts_the_partial_answer_last() -> None:
    """Prefill: the partial answer is the last (assistant) message; other parameters stay."""
    out = continuation_request(REQUEST, "Once upon", prefill=True)
    assert out["messages"][-1] == {"role": "assistant", "content": "Once upon"}
    assert out["temperature"] == 0 and len(REQUEST["messages"]) == 1


def test_instruction_follows_the_partial_answer() -> None:
    """Without prefill the partial answer is followed by a request to continue it."""
    out = continuation_request(REQUEST, "Once upon", prefill=False)
    assert out["messages"][-2:] == [
        {"role": "assistant", "content": "Once upon"},
        {"role": "user", "content": CONTINUE_INSTRUCTION},
    ]


def test_repeated_tail_is_removed() -> None:
    """The words a model repeats from the end of the sent text are dropped."""
    assert feed_all("the cat sat on", [" sat", " on", " the", " mat."]) == " the mat."


def test_a_restart_of_the_whole_answer_is_removed() -> None:
    """A model that starts over: only what goes beyond the sent text remains."""
    assert feed_all("Hello there", ["Hel", "lo the", "re, friend"]) == ", friend"


def test_new_text_is_kept_whole() -> None:
    """No overlap: nothing is dropped (a one- or two-letter match is chance, not repetition)."""
    assert feed_all("It was late", [" and", " dark."]) == " and dark."
    assert overlap("abc de", "e fg") == 0


def test_short_continuations_are_released_at_the_end() -> None:
    """Text held back while undecided comes out on flush, minus the overlap."""
    flt = OverlapFilter("a long enough sentence that was cut")
    assert flt.feed(" was cut short") == ""
    assert flt.flush() == " short"
    assert flt.feed(" more") == " more"


def relay() -> Relay:
    replay = ReplayedStream()
    routed = RoutedStream(head=[], stream=replay, rest=aiter(replay), model="m",
                          deployment="d", attempts=1, route="primary")  # fmt: skip
    return Relay(routed, {})


def test_tool_call_streams_are_never_continued() -> None:
    """Once a tool-call delta went out, a broken stream is not continued."""
    r = relay()
    r.encode({"id": "x", "choices": [{"index": 0, "delta": {"content": "hi"}}]})
    assert r.can_continue(True, 0, 2)
    call = {"index": 0, "id": "t", "function": {"name": "f", "arguments": "{"}}
    r.encode({"id": "x", "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
    assert not r.can_continue(True, 0, 2)


def test_continuations_are_bounded_and_can_be_switched_off() -> None:
    """`stream_resume: false` and `max_continuations` are obeyed; so is n > 1."""
    r = relay()
    assert not r.can_continue(False, 0, 2) and not r.can_continue(True, 2, 2)
    r.encode({"id": "x", "choices": [{"index": 1, "delta": {"content": "b"}}]})
    assert not r.can_continue(True, 0, 2)


def test_usage_is_stripped_from_relayed_chunks() -> None:
    """Usage on a content chunk is kept aside, not relayed; a usage-only chunk is dropped."""
    r = relay()
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    event = r.encode({"id": "x", "choices": [{"index": 0, "delta": {"content": "a"}}],
                      "usage": usage})  # fmt: skip
    assert event is not None and b"usage" not in event
    assert r.encode({"id": "x", "choices": [], "usage": usage}) is None
    r.stream_ended(complete=True)
    assert r.billable_usage() == usage
