"""The minion's store of just-finished calls' replies: expiry and bounds."""

from __future__ import annotations

from func_amqp.minion.recent import RecentReplies
from func_amqp.protocol.envelope import Envelope


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reply(size: int) -> Envelope:
    return Envelope(body=b"x" * size)


def test_a_reply_is_kept_for_its_time_then_forgotten() -> None:
    clock = Clock()
    recent = RecentReplies(60, clock=clock)
    kept = reply(10)
    recent.add("c1", "test.add", "m1", kept)
    clock.now += 59
    found = recent.get("c1")
    assert found is not None and found.reply is kept and found.full_name == "test.add" and found.request_id == "m1"
    clock.now += 2
    recent.prune()  # as the minion's heartbeat does, with no call coming
    assert len(recent) == 0 and recent.get("c1") is None


def test_the_oldest_go_first_when_count_or_bytes_run_out() -> None:
    recent = RecentReplies(60, max_replies=2, max_bytes=100, clock=Clock())
    for i in range(3):
        recent.add(f"c{i}", "test.ping", None, reply(10))
    assert recent.get("c0") is None and recent.get("c1") is not None and recent.get("c2") is not None
    recent.add("big", "test.echo", None, reply(95))
    assert len(recent) == 1 and recent.get("big") is not None
    recent.add("huge", "test.echo", None, reply(101))  # larger than the whole store
    assert recent.get("huge") is None and recent.get("big") is not None


def test_a_call_id_used_again_keeps_the_latest_reply_and_counts_once() -> None:
    recent = RecentReplies(60, max_bytes=100, clock=Clock())
    recent.add("c", "test.ping", "first", reply(60))
    recent.add("c", "test.ping", "second", reply(60))
    found = recent.get("c")
    assert found is not None and found.request_id == "second" and len(recent) == 1
