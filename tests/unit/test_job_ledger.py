"""The minion's job ledger, the pool queues its tags make, and the jobs settings in config files."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from func_amqp.config import MinionConfig, OverlordConfig
from func_amqp.errors import ConfigError
from func_amqp.minion.jobs import LEDGER_RETENTION, JobLedger, tag_subsets
from func_amqp.minion.security import Caller
from func_amqp.protocol import names
from func_amqp.protocol.messages import ExceptionResponse, JobEvent, JobState, MethodResponse, ProgressIndication

CALLER = Caller("key", "cn", is_ca=False)
CA = Caller("ca-key", "certmaster", is_ca=True)
LOGGER = "func_amqp.minion.jobs"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledgers" / "web01.jsonl"


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_lines(path: Path, *texts: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{t}\n" for t in texts), encoding="utf-8")


# --- the ledger -----------------------------------------------------------------------------


def test_a_new_ledger_knows_nothing(path: Path) -> None:
    ledger = JobLedger(path)
    assert path.parent.is_dir()
    assert not ledger.started("j1")
    assert ledger.final("j1") is None
    assert ledger.cancelled_by("j1") is None


def test_record_start(path: Path) -> None:
    ledger = JobLedger(path)
    ledger.record_start("j1", 2)
    assert ledger.started("j1")
    assert not ledger.started("j2")
    assert ledger.final("j1") is None
    (entry,) = lines(path)
    assert entry["job"] == "j1" and entry["started"] == 2
    assert abs(entry["at"] - time.time()) < 60


@pytest.mark.parametrize(
    "event",
    [
        JobEvent("j1", "web01", JobState.SUCCEEDED, 1_700_000_000.5, 2, result=MethodResponse({"rc": 0, "out": ["a"]})),
        JobEvent("j1", "web01", JobState.FAILED, 1_700_000_000.5, result=ExceptionResponse(7, "boom", "builtins.ValueError", "tb")),
        JobEvent("j1", "web01", JobState.CANCELLED, 1.0, result=ExceptionResponse(14, "cancelled"), progress=ProgressIndication("x", 1, 2)),
        JobEvent("j1", "web01", JobState.EXPIRED, 1.0, detail="too late"),
    ],
    ids=lambda e: e.state.value,
)
def test_record_final_gives_the_event_back(path: Path, event: JobEvent) -> None:
    ledger = JobLedger(path)
    ledger.record_start("j1", 1)
    ledger.record_final(event)
    assert ledger.final("j1") == event
    assert ledger.started("j1")  # the final does not forget the start
    assert JobLedger(path).final("j1") == event


def test_record_cancel_remembers_who(path: Path) -> None:
    ledger = JobLedger(path)
    ledger.record_cancel("j1", CALLER)
    ledger.record_cancel("j2", CA)
    assert ledger.cancelled_by("j1") == ("key", False)
    assert ledger.cancelled_by("j2") == ("ca-key", True)
    assert ledger.cancelled_by("j3") is None
    assert not ledger.started("j1")
    assert ledger.final("j1") is None


def test_the_ledger_survives_reopening(path: Path) -> None:
    event = JobEvent("j2", "web01", JobState.SUCCEEDED, 5.0, result=MethodResponse(3))
    ledger = JobLedger(path)
    ledger.record_start("j1", 1)
    ledger.record_start("j2", 1)
    ledger.record_final(event)
    ledger.record_cancel("j3", CALLER)
    again = JobLedger(path)
    assert again.started("j1") and again.started("j2") and not again.started("j3")
    assert again.final("j1") is None
    assert again.final("j2") == event
    assert again.cancelled_by("j3") == ("key", False)
    again.record_start("j4", 3)
    assert [entry["job"] for entry in lines(path)] == ["j1", "j2", "j2", "j3", "j4"]
    assert JobLedger(path).started("j4")


def test_reopening_an_intact_ledger_does_not_rewrite_it(path: Path) -> None:
    ledger = JobLedger(path)
    ledger.record_start("j1", 1)
    before = path.stat().st_ino, path.read_bytes()
    JobLedger(path)
    assert (path.stat().st_ino, path.read_bytes()) == before


def test_damaged_lines_are_skipped_with_a_warning(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = time.time()
    good = json.dumps({"job": "j1", "at": now, "started": 1})
    write_lines(
        path,
        "{not json",
        good,
        "",
        "[1, 2]",
        '"just a string"',
        json.dumps({"job": "j2", "started": 1}),  # no time
        json.dumps({"at": now, "started": 1}),  # no job
        json.dumps({"job": "j3", "at": "soon", "started": 1}),
        json.dumps({"job": "j4", "at": None, "started": 1}),
        '{"job": "j5", "at": ',  # cut short
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ledger = JobLedger(path)
    assert ledger.started("j1")
    assert not any(ledger.started(j) for j in ("j2", "j3", "j4", "j5"))
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 9
    assert all("damaged" in r.getMessage() for r in warnings)
    assert path.read_text(encoding="utf-8") == good + "\n"  # rewritten without them


@pytest.mark.parametrize("job", [["j1"], {"id": "j1"}])
def test_a_line_with_an_unhashable_job_is_skipped(path: Path, job: object) -> None:
    good = json.dumps({"job": "j2", "at": time.time(), "started": 1})
    write_lines(path, json.dumps({"job": job, "at": time.time(), "started": 1}), good)
    assert JobLedger(path).started("j2")


def test_a_line_with_bytes_that_are_not_utf8_is_skipped(path: Path) -> None:
    good = json.dumps({"job": "j2", "at": time.time(), "started": 1}).encode()
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"job": "j1", "at": 1\xff}\n' + good + b"\n")
    assert JobLedger(path).started("j2")


def test_a_final_with_a_bytes_result_is_recorded(path: Path) -> None:
    event = JobEvent("j1", "web01", JobState.SUCCEEDED, 1.0, result=MethodResponse([b"\x00\xff", "sha1"]))
    ledger = JobLedger(path)
    ledger.record_final(event)
    assert JobLedger(path).final("j1") == event


def test_entries_past_the_retention_are_dropped(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = time.time()
    old = json.dumps({"job": "old", "at": now - LEDGER_RETENTION - 60, "started": 1})
    older_part = json.dumps({"job": "mixed", "at": now - LEDGER_RETENTION - 60, "started": 1})
    recent_part = json.dumps({"job": "mixed", "at": now - 60, "cancelled": "key", "by_ca": False})
    recent = json.dumps({"job": "recent", "at": now - LEDGER_RETENTION + 3600, "started": 1})
    write_lines(path, old, older_part, recent, recent_part)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ledger = JobLedger(path)
    assert not ledger.started("old")
    assert ledger.started("recent")
    assert not ledger.started("mixed")
    assert ledger.cancelled_by("mixed") == ("key", False)
    assert path.read_text(encoding="utf-8") == f"{recent}\n{recent_part}\n"
    assert not caplog.records  # dropping old entries is no damage


def test_the_retention_is_far_beyond_a_jobs_time_to_live() -> None:
    assert LEDGER_RETENTION >= 7 * 24 * 3600
    assert LEDGER_RETENTION > OverlordConfig().job_ttl


def test_entries_of_one_job_merge_in_order(path: Path) -> None:
    now = time.time()
    write_lines(
        path,
        json.dumps({"job": "j1", "at": now, "cancelled": "key", "by_ca": False}),
        json.dumps({"job": "j1", "at": now, "cancelled": "ca-key", "by_ca": True}),
    )
    assert JobLedger(path).cancelled_by("j1") == ("ca-key", True)


# --- tag subsets -------------------------------------------------------------------------------


def test_tag_subsets_of_no_tags_is_the_empty_one() -> None:
    assert tag_subsets({}) == [{}]


def test_tag_subsets_of_one_tag() -> None:
    assert tag_subsets({"arch": "x86_64"}) == [{}, {"arch": "x86_64"}]


@pytest.mark.parametrize("count", range(names.MAX_TAGS + 1))
def test_tag_subsets_are_every_subset(count: int) -> None:
    tags = {f"t{i}": f"v{i}" for i in range(count)}
    subsets = tag_subsets(tags)
    assert len(subsets) == 2**count
    assert {} in subsets and tags in subsets
    keys = {frozenset(s.items()) for s in subsets}
    assert len(keys) == 2**count  # no subset twice
    assert all(s.items() <= tags.items() for s in subsets)
    assert len({names.pool_key("builders", s) for s in subsets}) == 2**count


def test_tag_subsets_do_not_change_the_tags() -> None:
    tags = {"distro": "fedora-40", "arch": "x86_64"}
    tag_subsets(tags)
    assert tags == {"distro": "fedora-40", "arch": "x86_64"}


# --- configuration -------------------------------------------------------------------------------


def test_pools_and_tags_default_to_none() -> None:
    config = MinionConfig()
    assert config.jobs is True
    assert config.pool_slots == {}
    assert config.tag_map == {}


def test_pools_parse_into_slots() -> None:
    config = MinionConfig.from_mapping({"pools": "builders:2, other"})
    assert config.pools == ("builders:2", "other")
    assert config.pool_slots == {"builders": 2, "other": 1}


def test_pools_and_tags_from_a_file(tmp_path: Path) -> None:
    conf = tmp_path / "minion.conf"
    conf.write_text("[main]\njobs = no\npools = builders:4\n  fast-lane:1\ntags = arch=x86_64 distro=fedora-40\n", encoding="utf-8")
    config = MinionConfig.load(conf)
    assert config.jobs is False
    assert config.pool_slots == {"builders": 4, "fast-lane": 1}
    assert config.tag_map == {"arch": "x86_64", "distro": "fedora-40"}


@pytest.mark.parametrize("raw", ["arch=x86_64 distro=fedora-40", "arch=x86_64,distro=fedora-40", "distro=fedora-40\narch=x86_64"])
def test_tags_parse_into_a_map(raw: str) -> None:
    assert MinionConfig.from_mapping({"tags": raw}).tag_map == {"arch": "x86_64", "distro": "fedora-40"}


def test_as_many_tags_as_allowed() -> None:
    raw = " ".join(f"t{i}=v" for i in range(names.MAX_TAGS))
    assert len(MinionConfig.from_mapping({"tags": raw}).tag_map) == names.MAX_TAGS


@pytest.mark.parametrize(
    "raw, bad",
    [
        ("Builders", "Builders"),
        ("builders:2, BIG:1", "BIG:1"),
        ("builders:0", "builders:0"),
        ("builders:-1", "builders:-1"),
        ("builders:two", "builders:two"),
        ("builders:2.5", "builders:2.5"),
        ("builders:", "builders:"),
        (":2", ":2"),
        ("builders:2:3", "builders:2:3"),
        ("build=ers", "build=ers"),
        ("-builders", "-builders"),
        ("b" * 64, "b" * 64),
    ],
)
def test_bad_pools_are_config_errors_naming_the_item(raw: str, bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        MinionConfig.from_mapping({"pools": raw}, "/etc/func-amqp/minion.conf")
    assert repr(bad) in str(info.value)
    assert "pool" in str(info.value)


@pytest.mark.parametrize(
    "raw, bad",
    [
        ("arch", "arch"),
        ("arch=x86_64 distro", "distro"),
        ("Arch=x86_64", "Arch=x86_64"),
        ("arch=X86_64", "arch=X86_64"),
        ("=x86_64", "=x86_64"),
        ("arch=", "arch="),
        ("arch=x=y", "arch=x=y"),
        ("arch:x86_64", "arch:x86_64"),
        ("arch=x86:64", "arch=x86:64"),
        ("os=fedora;40", "os=fedora;40"),
    ],
)
def test_bad_tags_are_config_errors_naming_the_item(raw: str, bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        MinionConfig.from_mapping({"tags": raw})
    assert repr(bad) in str(info.value)
    assert "tag" in str(info.value)


def test_too_many_tags_is_a_config_error() -> None:
    raw = " ".join(f"t{i}=v" for i in range(names.MAX_TAGS + 1))
    with pytest.raises(ConfigError) as info:
        MinionConfig.from_mapping({"tags": raw})
    assert f"{names.MAX_TAGS + 1} tags" in str(info.value)
    assert f"at most {names.MAX_TAGS}" in str(info.value)


def test_a_bad_pool_in_a_file_is_a_config_error(tmp_path: Path) -> None:
    conf = tmp_path / "minion.conf"
    conf.write_text("[main]\npools = builders:0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="'builders:0'"):
        MinionConfig.load(conf)


def test_job_ttl_default_and_override() -> None:
    assert OverlordConfig().job_ttl == 24 * 3600.0
    assert OverlordConfig.from_mapping({"job_ttl": "90.5"}).job_ttl == 90.5


@pytest.mark.parametrize("raw", ["0", "-1", "-0.5", "nan", "inf"])
def test_job_ttl_must_be_positive(raw: str) -> None:
    with pytest.raises(ConfigError, match="'job_ttl'.*greater than 0"):
        OverlordConfig.from_mapping({"job_ttl": raw}, "overlord.conf")


def test_job_ttl_must_be_a_number() -> None:
    with pytest.raises(ConfigError, match="job_ttl"):
        OverlordConfig.from_mapping({"job_ttl": "a day"})


def test_a_minion_whose_pool_queues_would_have_too_long_names_is_refused() -> None:
    values = {"pools": "b" * 60, "tags": " ".join(f"t{i}{'k' * 40}={'v' * 60}" for i in range(4))}
    with pytest.raises(ConfigError, match="AMQP allows 255"):
        MinionConfig.from_mapping(values, "minion.conf")
