"""The audit log: exact line format, escaping of hostile values, file mode, concurrency."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import stat
import threading
from pathlib import Path

import pytest

from func_amqp.errors import Code, ConfigError
from func_amqp.minion import audit
from func_amqp.minion.audit import AuditLog, args_digest, format_line, parse_line

CALLER = "overlord.example.com-1a2b3c4d"
CALL_ID = "c0ffee00-1234"
LINE = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z caller=\S+ method=\S+ args_sha256=[0-9a-f]{64} "
    r"call=\S+ outcome=\S+( detail=\S+)?"
)
NOW = datetime.datetime(2026, 12, 3, 17, 50, 1, 123456, tzinfo=datetime.timezone.utc)


def read_lines(path: Path) -> list[str]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data.decode("ascii").split("\n")[:-1]


# --- format ---------------------------------------------------------------------------


def test_line_format_is_exact() -> None:
    digest = args_digest([1, "two"])
    line = format_line(CALLER, "test.add", digest, CALL_ID, "ok", now=NOW)
    assert line == (
        f"2026-12-03T17:50:01.123Z caller={CALLER} method=test.add args_sha256={digest} "
        f"call={CALL_ID} outcome=ok"
    )


def test_detail_is_last_and_quoted_when_it_has_spaces() -> None:
    line = format_line(CALLER, "test.add", "0" * 64, CALL_ID, "denied:ACCESS_DENIED", "not in the ACLs", now=NOW)
    assert line.endswith(' outcome=denied:ACCESS_DENIED detail="not in the ACLs"')


def test_timestamp_is_utc_with_milliseconds() -> None:
    plus_two = datetime.timezone(datetime.timedelta(hours=2))
    assert audit.timestamp(NOW.astimezone(plus_two)) == "2026-12-03T17:50:01.123Z"


def test_outcome_helpers() -> None:
    assert audit.denied(Code.ACCESS_DENIED) == "denied:ACCESS_DENIED"
    assert audit.refused(Code.BAD_SIGNATURE) == "refused:BAD_SIGNATURE"
    assert audit.error("builtins.ValueError") == "error:builtins.ValueError"
    assert (audit.ACCEPTED, audit.OK, audit.CANCELLED) == ("accepted", "ok", "cancelled")


def test_args_digest_is_sha256_of_canonical_json() -> None:
    args = [{"b": 1, "a": [1.5, None, True]}, "x"]
    canonical = '[{"a":[1.5,null,true],"b":1},"x"]'
    assert args_digest(args) == hashlib.sha256(canonical.encode()).hexdigest()
    assert args_digest([{"a": [1.5, None, True], "b": 1}, "x"]) == args_digest(args)


def test_args_digest_uses_repr_for_unknown_objects() -> None:
    class Thing:
        def __repr__(self) -> str:
            return "Thing()"

    expected = json.dumps(["Thing()"], separators=(",", ":"))
    assert args_digest([Thing()]) == hashlib.sha256(expected.encode()).hexdigest()


def test_args_digest_never_fails() -> None:
    cyclic: list[object] = []
    cyclic.append(cyclic)
    for args in ([{1: "a", "b": 2}], cyclic, ["\udcff"]):
        assert re.fullmatch(r"[0-9a-f]{64}", args_digest(args))


# --- escaping -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method",
    [
        "test.ping\n2026-01-01T00:00:00.000Z caller=ca-1 method=command.run",
        'test.ping" outcome=ok',
        "test ping outcome=ok",
        "test.ping\r\x1b[2K",
        "test.p\u202eing",
        "test.ping\u2028x",
        "te\\st",
        "",
        "a=b",
        "\x7f",
    ],
)
def test_hostile_method_cannot_break_the_line_or_forge_fields(method: str) -> None:
    line = format_line(CALLER, method, "0" * 64, CALL_ID, "accepted", now=NOW)
    assert "\n" not in line and "\r" not in line
    assert line.isascii() and line.isprintable()
    fields = parse_line(line)
    assert fields["method"] == method
    assert fields["caller"] == CALLER
    assert fields["outcome"] == "accepted"
    assert set(fields) == {"time", "caller", "method", "args_sha256", "call", "outcome"}


def test_hostile_detail_round_trips() -> None:
    detail = 'boom\n" outcome=ok\tcaller=x \\ \u00e9\U0001F600'
    line = format_line(CALLER, "test.explode", "0" * 64, CALL_ID, "error:builtins.Exception", detail, now=NOW)
    assert line.isascii() and "\n" not in line
    assert parse_line(line)["detail"] == detail
    assert parse_line(line)["outcome"] == "error:builtins.Exception"


def test_quoted_values_are_json_strings() -> None:
    assert audit.escape_value("a b") == '"a b"'
    assert audit.escape_value('say "hi"') == '"say \\"hi\\""'
    assert audit.escape_value("x\ny") == '"x\\ny"'
    assert audit.escape_value("") == '""'
    assert audit.escape_value("web1.example.com-0badf00d") == "web1.example.com-0badf00d"


def test_parse_line_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_line("not an audit line")


# --- the file -------------------------------------------------------------------------


def test_record_appends_one_line_per_call(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path) as log:
        first = log.record(CALLER, "test.ping", [], CALL_ID, audit.ACCEPTED)
        second = log.record(CALLER, "test.ping", [], CALL_ID, audit.OK)
    assert read_lines(path) == [first, second]
    for line in (first, second):
        assert LINE.fullmatch(line)
    assert parse_line(first)["args_sha256"] == args_digest([])


def test_record_with_precomputed_digest(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.log") as log:
        line = log.record(CALLER, "test.ping", None, CALL_ID, "ok", digest="f" * 64)
    assert parse_line(line)["args_sha256"] == "f" * 64


def test_file_is_created_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "audit.log"
    old = os.umask(0)
    try:
        with AuditLog(path) as log:
            log.record(CALLER, "test.ping", [], CALL_ID, "ok")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_existing_content_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text("earlier\n", encoding="ascii")
    with AuditLog(path) as log:
        line = log.record(CALLER, "test.ping", [], CALL_ID, "ok")
    assert read_lines(path) == ["earlier", line]


def test_rotated_file_is_recreated(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path) as log:
        first = log.record(CALLER, "test.ping", [], CALL_ID, "ok")
        path.rename(tmp_path / "audit.log.1")
        second = log.record(CALLER, "test.ping", [], CALL_ID, "ok")
        assert read_lines(path) == [second]
        path.unlink()
        third = log.record(CALLER, "test.ping", [], CALL_ID, "ok")
    assert read_lines(tmp_path / "audit.log.1") == [first]
    assert read_lines(path) == [third]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_unopenable_path_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="ascii")
    with pytest.raises(ConfigError, match="audit log"):
        AuditLog(blocker / "audit.log")


def test_write_failure_is_logged_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def full(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    with AuditLog(tmp_path / "audit.log") as log:
        monkeypatch.setattr(os, "write", full)
        with caplog.at_level(logging.ERROR, logger=audit.LOGGER_NAME):
            line = log.record(CALLER, "test.ping", [], CALL_ID, "ok")
    assert any(line in r.getMessage() for r in caplog.records)


def test_concurrent_writers_produce_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    threads_n, per_thread = 8, 200
    detail = "x" * 3000 + "\n" + "y" * 3000
    with AuditLog(path) as log:

        def writer(n: int) -> None:
            for i in range(per_thread):
                log.record(CALLER, f"test.m{n}", [n, i], f"{n}-{i}", "ok", detail)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    lines = read_lines(path)
    assert len(lines) == threads_n * per_thread
    seen = set()
    for line in lines:
        fields = parse_line(line)
        assert fields["detail"] == detail
        n, i = (int(part) for part in fields["call"].split("-"))
        assert fields["method"] == f"test.m{n}"
        assert fields["args_sha256"] == args_digest([n, i])
        seen.add((n, i))
    assert len(seen) == threads_n * per_thread


def test_two_logs_on_one_file_interleave_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path) as one, AuditLog(path) as two:
        for i in range(50):
            one.record(CALLER, "test.one", [i], str(i), "ok")
            two.record(CALLER, "test.two", [i], str(i), "ok")
    lines = read_lines(path)
    assert len(lines) == 100
    assert all(LINE.fullmatch(line) for line in lines)


# --- logger only ----------------------------------------------------------------------


def test_no_path_logs_to_the_audit_logger(caplog: pytest.LogCaptureFixture) -> None:
    log = AuditLog(None)
    with caplog.at_level(logging.INFO, logger="func_amqp.audit"):
        line = log.record(CALLER, "test.ping", [], CALL_ID, "ok")
    records = [r for r in caplog.records if r.name == "func_amqp.audit"]
    assert [r.getMessage() for r in records] == [line]
    assert records[0].levelno == logging.INFO
    log.close()
