"""The overlord's job records: ids, owners, folding events in, func's status codes, the store."""

from __future__ import annotations

import getpass
import json
import logging
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from func_amqp.errors import Code
from func_amqp.overlord import jobs
from func_amqp.overlord.jobs import JobStore, apply_event, deciding_entries, job_status, new_record
from func_amqp.protocol import names
from func_amqp.protocol.messages import ExceptionResponse, JobEvent, JobState, MethodResponse, ProgressIndication
from func_amqp.utils import REMOTE_ERROR

POOL = "builders"
PLACEHOLDER = "@builders"
OWNER = "alice.example.org"


def record(*targets: str, pool: str | None = None, job_id: str = "j1") -> dict[str, Any]:
    return new_record(job_id, OWNER, "*", "test", "add", [1, 2], 3600.0, pool, None, list(targets))


def pool_record() -> dict[str, Any]:
    return record(PLACEHOLDER, pool=POOL)


def event(minion: str, state: JobState, at: float = 100.0, attempt: int = 1, **kwargs: Any) -> JobEvent:
    return JobEvent("j1", minion, state, at, attempt, **kwargs)


def succeeded(minion: str, value: Any, at: float = 200.0, attempt: int = 1) -> JobEvent:
    return event(minion, JobState.SUCCEEDED, at, attempt, result=MethodResponse(value))


def failed(minion: str, at: float = 200.0) -> JobEvent:
    return event(minion, JobState.FAILED, at, result=ExceptionResponse(int(Code.METHOD_FAILED), "boom", "builtins.ValueError", "Traceback ..."))


def state_of(rec: dict[str, Any], minion: str) -> str:
    return rec["minions"][minion]["state"]


# --- job ids and owners --------------------------------------------------------------------


def test_new_job_id_is_funcs_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 1700000000.25)
    assert jobs.new_job_id("web01.example.org", "test", "add") == "web01.example.org-test-add-1700000000.25"


def test_new_job_id_replaces_dashes_inside_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 1700000000.5)
    job_id = jobs.new_job_id("web-01;db-*", "my-module", "do-it")
    assert job_id == "web_01;db_*-my_module-do_it-1700000000.5"
    spec, module, method, when = job_id.split("-")
    assert (spec, module, method) == ("web_01;db_*", "my_module", "do_it")
    assert float(when) == 1700000000.5


def test_new_job_ids_differ_in_time() -> None:
    first = jobs.new_job_id("*", "test", "ping")
    time.sleep(0.002)
    assert jobs.new_job_id("*", "test", "ping") != first


@pytest.mark.parametrize(
    "user, host, expected",
    [
        ("alice", "build01.example.org", "alice.build01.example.org"),
        ("Alice", "BUILD01.Example.ORG", "alice.build01.example.org"),
        ("john doe", "host_1", "john-doe.host_1"),
        ("jöhn", "höst", "j-hn.h-st"),
        ("-root-", "localhost.", "root-.localhost"),
        ("", "", "overlord"),
        ("...", "---", "overlord"),
        ("ü", "", "overlord"),
        ("$USER", "my host (1)", "user.my-host-1"),
    ],
)
def test_default_owner(monkeypatch: pytest.MonkeyPatch, user: str, host: str, expected: str) -> None:
    monkeypatch.setattr(getpass, "getuser", lambda: user)
    monkeypatch.setattr(socket, "gethostname", lambda: host)
    owner = jobs.default_owner()
    assert owner == expected
    assert names.valid_minion_name(owner)


@pytest.mark.parametrize(
    "user, host", [("a" * 300, "h"), ("builder", "x" * 250), ("u", "-" * 150 + "b" * 100)], ids=["user", "host", "dashes"]
)
def test_default_owner_of_long_names_is_valid(monkeypatch: pytest.MonkeyPatch, user: str, host: str) -> None:
    monkeypatch.setattr(getpass, "getuser", lambda: user)
    monkeypatch.setattr(socket, "gethostname", lambda: host)
    owner = jobs.default_owner()
    assert names.valid_minion_name(owner)
    assert len(owner) <= 200


@pytest.mark.parametrize(
    "user, host", [("a" * 199, "example.org"), ("builder", "node-" + "x" * 186 + ".example.org")], ids=["user", "fqdn"]
)
def test_default_owner_cut_at_a_separator_is_valid(monkeypatch: pytest.MonkeyPatch, user: str, host: str) -> None:
    monkeypatch.setattr(getpass, "getuser", lambda: user)
    monkeypatch.setattr(socket, "gethostname", lambda: host)
    assert names.valid_minion_name(jobs.default_owner())


# --- records ----------------------------------------------------------------------------------


def test_new_record(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 1000.0)
    tags = {"arch": "x86_64"}
    rec = new_record("j1", OWNER, "web*", "test", "add", [1, 2], 60.0, POOL, tags, [PLACEHOLDER])
    assert rec == {
        "id": "j1",
        "owner": OWNER,
        "spec": "web*",
        "module": "test",
        "method": "add",
        "args": [1, 2],
        "created": 1000.0,
        "expires": 1060.0,
        "pool": POOL,
        "tags": {"arch": "x86_64"},
        "minions": {PLACEHOLDER: {"state": "sent", "at": 1000.0, "attempt": 1, "detail": ""}},
        "cancel_requested": None,
    }
    tags["arch"] = "aarch64"
    assert rec["tags"] == {"arch": "x86_64"}
    assert json.loads(json.dumps(rec)) == rec


def test_new_record_entries_are_independent() -> None:
    rec = record("a", "b")
    rec["minions"]["a"]["state"] = "started"
    assert state_of(rec, "b") == "sent"
    assert new_record("j", OWNER, "*", "m", "f", [], 1.0, None, None, [])["tags"] == {}


# --- folding events in ------------------------------------------------------------------------


def test_event_moves_an_entry_forward() -> None:
    rec = record("a")
    assert apply_event(rec, event("a", JobState.STARTED, 150.0, detail="d"))
    assert rec["minions"]["a"] == {"state": "started", "at": 150.0, "attempt": 1, "detail": "d"}


@pytest.mark.parametrize(
    "newer, older",
    [
        (JobState.ACCEPTED, JobState.SENT),
        (JobState.STARTED, JobState.SENT),
        (JobState.STARTED, JobState.ACCEPTED),
        (JobState.PROGRESS, JobState.STARTED),
        (JobState.PROGRESS, JobState.ACCEPTED),
    ],
)
def test_an_older_state_never_overwrites_a_newer_one(newer: JobState, older: JobState) -> None:
    rec = record("a")
    assert apply_event(rec, event("a", newer, 150.0))
    assert not apply_event(rec, event("a", older, 160.0))
    assert state_of(rec, "a") == newer.value
    assert rec["minions"]["a"]["at"] == 150.0


@pytest.mark.parametrize("final", sorted(s for s in JobState if s.final))
@pytest.mark.parametrize("later", list(JobState))
def test_a_final_state_is_never_overwritten(final: JobState, later: JobState) -> None:
    rec = record("a")
    assert apply_event(rec, event("a", final, 150.0, detail="first"))
    before = json.dumps(rec, sort_keys=True)
    assert not apply_event(rec, event("a", later, 160.0, detail="second", result=MethodResponse(1)))
    assert json.dumps(rec, sort_keys=True) == before


@pytest.mark.parametrize("current", [JobState.SENT, JobState.ACCEPTED, JobState.STARTED, JobState.PROGRESS])
def test_a_final_state_ends_any_earlier_one(current: JobState) -> None:
    rec = record("a")
    apply_event(rec, event("a", current, 150.0))
    assert apply_event(rec, succeeded("a", 5, at=120.0))  # a clock behind does not matter
    assert state_of(rec, "a") == "succeeded"


def test_progress_events_only_move_forward_in_time() -> None:
    rec = record("a")
    assert apply_event(rec, event("a", JobState.PROGRESS, 150.0, progress=ProgressIndication("build", 1, 4)))
    assert not apply_event(rec, event("a", JobState.PROGRESS, 140.0, progress=ProgressIndication("prepare", 0, 4)))
    assert not apply_event(rec, event("a", JobState.PROGRESS, 150.0, progress=ProgressIndication("prepare", 0, 4)))
    assert rec["minions"]["a"]["progress"]["phase"] == "build"
    assert apply_event(rec, event("a", JobState.PROGRESS, 151.0, progress=ProgressIndication("build", 2, 4, "half")))
    assert rec["minions"]["a"]["progress"] == {"kind": "progress", "phase": "build", "current": 2, "total": 4, "message": "half"}


def test_progress_is_kept_when_the_job_ends() -> None:
    rec = record("a")
    apply_event(rec, event("a", JobState.PROGRESS, 150.0, progress=ProgressIndication("build", 3, 4)))
    apply_event(rec, succeeded("a", 5))
    entry = rec["minions"]["a"]
    assert entry["state"] == "succeeded"
    assert entry["progress"]["current"] == 3
    assert entry["result"]["opcode"] == "_method_response"


@pytest.mark.parametrize("state", [JobState.ACCEPTED, JobState.STARTED])
def test_a_repeated_event_changes_nothing(state: JobState) -> None:
    rec = record("a")
    assert apply_event(rec, event("a", state, 150.0))
    assert not apply_event(rec, event("a", state, 150.0))


def test_a_repeated_event_does_not_revive_a_superseded_taker() -> None:
    """Events are delivered at least once: a duplicate of the first taker's start must not
    make the job wait for a member that was interrupted."""
    rec = pool_record()
    first = event("b1", JobState.STARTED, 110.0, attempt=1)
    apply_event(rec, first)
    apply_event(rec, event("b2", JobState.STARTED, 120.0, attempt=2))
    apply_event(rec, succeeded("b2", "built", attempt=2))
    assert job_status(rec) == (jobs.JOB_ID_FINISHED, {"b2": "built"})
    apply_event(rec, first)  # the duplicate arrives late
    assert job_status(rec) == (jobs.JOB_ID_FINISHED, {"b2": "built"})


def test_events_of_other_minions_do_not_touch_an_entry() -> None:
    rec = record("a", "b")
    apply_event(rec, succeeded("a", 1))
    assert rec["minions"]["b"] == {"state": "sent", "at": rec["created"], "attempt": 1, "detail": ""}


# --- pools ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [JobState.ACCEPTED, JobState.STARTED, JobState.SUCCEEDED])
def test_the_pool_placeholder_goes_when_a_member_reports(state: JobState) -> None:
    rec = pool_record()
    assert apply_event(rec, event("b1", state))
    assert set(rec["minions"]) == {"b1"}


def test_a_later_attempt_supersedes_the_earlier_taker() -> None:
    rec = pool_record()
    apply_event(rec, event("b1", JobState.STARTED, 110.0, attempt=1))
    apply_event(rec, event("b2", JobState.STARTED, 120.0, attempt=2))
    b1, b2 = rec["minions"]["b1"], rec["minions"]["b2"]
    assert b1["superseded"] is True
    assert b1["state"] == "started"
    assert "delivery 2" in b1["detail"] and "b2" in b1["detail"]
    assert "superseded" not in b2
    assert set(deciding_entries(rec)) == {"b2"}


def test_the_same_attempt_does_not_supersede() -> None:
    rec = pool_record()
    apply_event(rec, event("b1", JobState.STARTED, 110.0, attempt=2))
    apply_event(rec, event("b2", JobState.ACCEPTED, 120.0, attempt=2))
    assert not any(entry.get("superseded") for entry in rec["minions"].values())


def test_a_finished_taker_is_not_superseded() -> None:
    rec = pool_record()
    apply_event(rec, succeeded("b1", 1))
    apply_event(rec, event("b2", JobState.STARTED, 300.0, attempt=2))
    assert "superseded" not in rec["minions"]["b1"]


def test_each_later_attempt_supersedes_the_one_before() -> None:
    rec = pool_record()
    for attempt, member in enumerate(["b1", "b2", "b3"], start=1):
        apply_event(rec, event(member, JobState.STARTED, 100.0 + attempt, attempt=attempt))
    assert [bool(rec["minions"][m].get("superseded")) for m in ("b1", "b2", "b3")] == [True, True, False]
    assert "delivery 2" in rec["minions"]["b1"]["detail"]  # the first reason stays
    assert "delivery 3" in rec["minions"]["b2"]["detail"]
    apply_event(rec, succeeded("b3", "done", attempt=3))
    assert job_status(rec) == (jobs.JOB_ID_FINISHED, {"b3": "done"})


@pytest.mark.parametrize("state", [JobState.DEAD_LETTERED, JobState.EXPIRED])
def test_the_broker_giving_up_supersedes_every_taker(state: JobState) -> None:
    rec = pool_record()
    apply_event(rec, event("b1", JobState.STARTED, 110.0, attempt=1))
    apply_event(rec, event("b2", JobState.STARTED, 120.0, attempt=2))
    apply_event(rec, event(PLACEHOLDER, state, 130.0, attempt=4, detail="given up after 3 deliveries"))
    assert rec["minions"]["b2"]["superseded"] is True
    assert rec["minions"]["b2"]["detail"] == "interrupted; given up after 3 deliveries"
    assert set(deciding_entries(rec)) == {PLACEHOLDER}
    code, results = job_status(rec)
    assert code == jobs.JOB_ID_FINISHED
    assert results == {PLACEHOLDER: [REMOTE_ERROR, f"job {state.value}", "given up after 3 deliveries", ""]}


def test_an_untaken_pool_job_expires_on_its_placeholder() -> None:
    rec = pool_record()
    assert apply_event(rec, event(PLACEHOLDER, JobState.EXPIRED, 130.0))
    assert set(rec["minions"]) == {PLACEHOLDER}
    assert state_of(rec, PLACEHOLDER) == "expired"
    assert job_status(rec)[0] == jobs.JOB_ID_FINISHED


def test_placeholder_removal_is_only_for_pool_jobs() -> None:
    rec = record(PLACEHOLDER, "a")
    apply_event(rec, event("a", JobState.STARTED))
    assert set(rec["minions"]) == {PLACEHOLDER, "a"}


# --- status --------------------------------------------------------------------------------------


def test_status_of_an_unknown_job_is_lost_in_space() -> None:
    assert job_status(None) == (jobs.JOB_ID_LOST_IN_SPACE, 0) == (2, 0)


def test_funcs_status_codes() -> None:
    assert (jobs.JOB_ID_RUNNING, jobs.JOB_ID_FINISHED, jobs.JOB_ID_LOST_IN_SPACE, jobs.JOB_ID_PARTIAL, jobs.JOB_ID_REMOTE_ERROR) == (0, 1, 2, 3, 4)


@pytest.mark.parametrize("state", [JobState.SENT, JobState.ACCEPTED, JobState.STARTED, JobState.PROGRESS])
def test_status_running_until_one_finishes(state: JobState) -> None:
    rec = record("a", "b")
    apply_event(rec, event("a", state))
    assert job_status(rec) == (jobs.JOB_ID_RUNNING, {}) == (0, {})


def test_status_partial_with_the_finished_ones() -> None:
    rec = record("a", "b", "c")
    apply_event(rec, succeeded("a", {"x": [1, 2]}))
    apply_event(rec, event("b", JobState.STARTED))
    assert job_status(rec) == (jobs.JOB_ID_PARTIAL, {"a": {"x": [1, 2]}})


def test_status_finished_with_values_and_remote_errors() -> None:
    rec = record("a", "b", "c")
    apply_event(rec, succeeded("a", 3))
    apply_event(rec, failed("b"))
    apply_event(rec, event("c", JobState.NEVER_REACHED, detail="minion c has no job queue"))
    code, results = job_status(rec)
    assert code == jobs.JOB_ID_FINISHED == 1
    assert results == {
        "a": 3,
        "b": [REMOTE_ERROR, "builtins.ValueError", "boom", "Traceback ..."],
        "c": [REMOTE_ERROR, "job never_reached", "minion c has no job queue", ""],
    }


def test_status_remote_error_when_no_target_was_reached() -> None:
    rec = record("a", "b")
    apply_event(rec, event("a", JobState.NEVER_REACHED, detail="no queue"))
    apply_event(rec, event("b", JobState.NEVER_REACHED))
    code, results = job_status(rec)
    assert code == jobs.JOB_ID_REMOTE_ERROR == 4
    assert results == {
        "a": [REMOTE_ERROR, "job never_reached", "no queue", ""],
        "b": [REMOTE_ERROR, "job never_reached", "never reached", ""],
    }


def test_status_remote_error_for_an_unroutable_pool_job() -> None:
    rec = pool_record()
    apply_event(rec, event(PLACEHOLDER, JobState.NEVER_REACHED, detail="no member of pool 'builders'"))
    assert job_status(rec)[0] == jobs.JOB_ID_REMOTE_ERROR


def test_an_exception_without_type_names_its_code() -> None:
    rec = record("a")
    apply_event(rec, event("a", JobState.CANCELLED, result=ExceptionResponse(int(Code.CANCELLED), "cancelled by alice")))
    code, results = job_status(rec)
    assert code == jobs.JOB_ID_FINISHED
    marker, etype, text, trace = results["a"]
    assert (marker, text, trace) == (REMOTE_ERROR, "cancelled by alice", "")
    assert "CANCELLED" in etype


@pytest.mark.parametrize("state", [JobState.EXPIRED, JobState.CANCELLED, JobState.DEAD_LETTERED, JobState.FAILED])
def test_a_final_state_without_result_is_a_remote_error(state: JobState) -> None:
    rec = record("a")
    apply_event(rec, event("a", state))
    code, results = job_status(rec)
    assert code == jobs.JOB_ID_FINISHED
    assert results["a"] == [REMOTE_ERROR, f"job {state.value}", state.value.replace("_", " "), ""]


def test_status_of_a_pool_job_counts_only_its_last_taker() -> None:
    rec = pool_record()
    apply_event(rec, event("b1", JobState.STARTED, 110.0, attempt=1))
    apply_event(rec, event("b2", JobState.STARTED, 120.0, attempt=2))
    assert job_status(rec) == (jobs.JOB_ID_RUNNING, {})
    apply_event(rec, succeeded("b2", "built", attempt=2))
    assert job_status(rec) == (jobs.JOB_ID_FINISHED, {"b2": "built"})


def test_deciding_entries() -> None:
    direct = record("a", "b")
    direct["minions"]["a"]["superseded"] = True  # ignored outside pools
    assert set(deciding_entries(direct)) == {"a", "b"}
    pool = pool_record()
    pool["minions"] = {"b1": {"state": "started", "superseded": True}, "b2": {"state": "started"}}
    assert set(deciding_entries(pool)) == {"b2"}
    pool["minions"]["b2"]["superseded"] = True
    assert set(deciding_entries(pool)) == {"b1", "b2"}  # all interrupted: all of them


# --- the store -----------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs")


def only_file(store: JobStore) -> Path:
    (path,) = store.directory.glob("*.json")
    return path


def test_put_and_get(store: JobStore) -> None:
    rec = record("a", "b")
    store.put(rec)
    assert store.get("j1") == rec
    assert store.get("j2") is None
    assert store.directory.stat().st_mode & 0o077 == 0


def test_get_from_a_missing_directory(store: JobStore) -> None:
    assert store.get("j1") is None
    assert store.all() == []
    assert store.update("j1", lambda rec: True) is None


def test_update_writes_only_a_change(store: JobStore) -> None:
    store.put(record("a"))

    def unchanged(rec: dict[str, Any]) -> bool:
        rec["spec"] = "not written"
        return False

    assert store.update("j1", unchanged)["spec"] == "not written"
    assert store.get("j1")["spec"] == "*"

    def changed(rec: dict[str, Any]) -> bool:
        rec["cancel_requested"] = 123.0
        return True

    assert store.update("j1", changed)["cancel_requested"] == 123.0
    assert store.get("j1")["cancel_requested"] == 123.0


def test_update_of_an_unknown_job_does_not_call_the_change(store: JobStore) -> None:
    store.put(record("a"))
    calls: list[Any] = []
    assert store.update("j2", lambda rec: calls.append(rec) or True) is None
    assert calls == []


def test_apply_folds_events_into_the_stored_record(store: JobStore) -> None:
    store.put(record("a", "b"))
    store.apply(succeeded("a", [1, "x"]))
    store.apply(event("b", JobState.STARTED))
    store.apply(event("b", JobState.ACCEPTED))  # older: ignored
    rec = store.get("j1")
    assert state_of(rec, "b") == "started"
    assert job_status(rec) == (jobs.JOB_ID_PARTIAL, {"a": [1, "x"]})
    assert store.apply(JobEvent("unknown", "a", JobState.STARTED, 1.0)) is None


def test_all_is_oldest_first(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    for job_id, created in [("late", 300.0), ("early", 100.0), ("middle", 200.0)]:
        monkeypatch.setattr(time, "time", lambda created=created: created)
        store.put(record("a", job_id=job_id))
    monkeypatch.undo()
    assert [rec["id"] for rec in store.all()] == ["early", "middle", "late"]


def test_all_skips_damaged_files(store: JobStore) -> None:
    store.put(record("a"))
    (store.directory / "broken.json").write_text("{not json", encoding="utf-8")
    (store.directory / "binary.json").write_bytes(b"\xff\xfe\x00")
    (store.directory / "list.json").write_text("[1, 2]", encoding="utf-8")
    (store.directory / "noid.json").write_text('{"created": 1}', encoding="utf-8")
    assert [rec["id"] for rec in store.all()] == ["j1"]


def test_forget(store: JobStore) -> None:
    store.put(record("a"))
    store.put(record("a", job_id="j2"))
    assert store.forget("j1") is True
    assert store.get("j1") is None
    assert store.forget("j1") is False
    assert [rec["id"] for rec in store.all()] == ["j2"]


def test_jobs_with_odd_ids_get_their_own_files(store: JobStore) -> None:
    ids = ["web*-test-add-1.5", "../../etc/passwd", "a/b", "\udcff", "x" * 512]
    for job_id in ids:
        store.put(record("a", job_id=job_id))
    assert len(list(store.directory.glob("*.json"))) == len(ids)
    for job_id in ids:
        assert store.get(job_id)["id"] == job_id
    assert not (store.directory.parent / "etc").exists()


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"{\"id\": \"j1\",", b"\xff\xfe garbage", b"null", b"[\"j1\"]", b"\"j1\"", b"NaN-ish"],
)
def test_a_damaged_record_reads_as_none(store: JobStore, content: bytes) -> None:
    store.put(record("a"))
    only_file(store).write_bytes(content)
    assert store.get("j1") is None
    assert store.apply(succeeded("a", 1)) is None
    assert only_file(store).read_bytes() == content


def test_a_record_of_another_job_reads_as_none(store: JobStore) -> None:
    store.put(record("a"))
    path = only_file(store)
    data = json.loads(path.read_text(encoding="utf-8"))
    data["id"] = "j2"
    path.write_text(json.dumps(data), encoding="utf-8")
    assert store.get("j1") is None


def test_a_damaged_record_is_logged(store: JobStore, caplog: pytest.LogCaptureFixture) -> None:
    store.put(record("a"))
    only_file(store).write_text("{oops", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="func_amqp.overlord.jobs"):
        store.get("j1")
    assert any("j1" in r.getMessage() for r in caplog.records)


def test_all_survives_a_record_with_a_damaged_created(store: JobStore) -> None:
    store.put(record("a"))
    (store.directory / "odd.json").write_text('{"id": "odd", "created": "yesterday"}', encoding="utf-8")
    assert {rec["id"] for rec in store.all()} >= {"j1"}


def test_a_bytes_result_is_stored(store: JobStore) -> None:
    store.put(record("a"))
    store.apply(succeeded("a", [b"\x00\xff", "sha1"]))
    assert job_status(store.get("j1")) == (jobs.JOB_ID_FINISHED, {"a": [b"\x00\xff", "sha1"]})


def test_bytes_arguments_are_stored(store: JobStore) -> None:
    rec = new_record("j1", OWNER, "*", "copyfile", "append", ["/tmp/x", b"\x00data"], 60.0, None, None, ["a"])
    store.put(rec)
    assert store.get("j1")["args"] == ["/tmp/x", b"\x00data"]
