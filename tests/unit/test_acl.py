"""func's minion ACLs: file format, globs, certmaster override, default deny, reloads."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

from func_amqp.errors import AccessToMethodDenied
from func_amqp.minion.acl import Acl, parse_line

CA_KEY = "Certmaster-CA-1a2b3c4d"
WEB = "web1.example.com-0badf00d"
DB = "db1.example.com-deadbeef"


def write_acl(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def bump_mtime(path: Path, seconds: int = 10) -> None:
    """Make a change visible even on filesystems with coarse timestamps."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


@pytest.fixture
def acl_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "minion-acl.d"
    directory.mkdir()
    return directory


def make_acl(acl_dir: Path, **kwargs: object) -> Acl:
    kwargs.setdefault("ca_key", CA_KEY)
    return Acl(acl_dir, **kwargs)  # type: ignore[arg-type]


# --- format ---------------------------------------------------------------------------


def test_commas_and_whitespace_both_separate_methods(acl_dir: Path) -> None:
    write_acl(acl_dir, "a.acl", f"{WEB} = test.ping,system.list_modules   command.run ,\tservice.status\n")
    acl = make_acl(acl_dir)
    for method in ("test.ping", "system.list_modules", "command.run", "service.status"):
        assert acl.allowed(WEB, method), method
    assert acl.grants()[WEB] == ("test.ping", "system.list_modules", "command.run", "service.status")


def test_comments_and_blank_lines_are_skipped(acl_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_acl(acl_dir, "a.acl", f"# who may do what\n\n   \n  # {DB} = *\n{WEB} = test.ping\n")
    with caplog.at_level(logging.WARNING):
        acl = make_acl(acl_dir)
        assert acl.allowed(WEB, "test.ping")
        assert not acl.allowed(DB, "test.ping")
    assert not caplog.records


def test_host_key_is_lower_cased_and_caller_key_too(acl_dir: Path) -> None:
    write_acl(acl_dir, "a.acl", "Web1.Example.COM-0BADF00D = test.ping\n")
    acl = make_acl(acl_dir, ca_key=None)
    assert list(acl.grants()) == ["web1.example.com-0badf00d"]
    assert acl.allowed("WEB1.example.com-0badf00d", "test.ping")


def test_method_patterns_are_case_sensitive(acl_dir: Path) -> None:
    write_acl(acl_dir, "a.acl", f"{WEB} = test.ping\n")
    acl = make_acl(acl_dir)
    assert not acl.allowed(WEB, "Test.Ping")


def test_same_key_accumulates_over_lines_and_files(acl_dir: Path) -> None:
    write_acl(acl_dir, "a.acl", f"{WEB} = test.ping\n{WEB} = test.add\n")
    write_acl(acl_dir, "b.acl", f"{WEB} = service.*\n")
    acl = make_acl(acl_dir)
    assert acl.allowed(WEB, "test.ping")
    assert acl.allowed(WEB, "test.add")
    assert acl.allowed(WEB, "service.restart")
    assert acl.grants()[WEB] == ("test.ping", "test.add", "service.*")


def test_only_acl_files_are_read(acl_dir: Path) -> None:
    write_acl(acl_dir, "a.acl.rpmsave", f"{WEB} = *\n")
    write_acl(acl_dir, "notes.txt", f"{WEB} = *\n")
    write_acl(acl_dir, ".hidden.acl", f"{WEB} = *\n")
    assert not make_acl(acl_dir).allowed(WEB, "test.ping")


def test_glob_keys_match_the_caller_key(acl_dir: Path) -> None:
    write_acl(acl_dir, "a.acl", "web*.example.com-* = test.*\n*-deadbeef = system.list_modules\n")
    acl = make_acl(acl_dir)
    assert acl.allowed(WEB, "test.ping")
    assert acl.allowed("web22.example.com-12345678", "test.add")
    assert not acl.allowed(DB, "test.ping")
    assert acl.allowed(DB, "system.list_modules")


def test_method_globs(acl_dir: Path) -> None:
    write_acl(acl_dir, "a.acl", f"{WEB} = test.* service.st?tus *.list_methods\n")
    acl = make_acl(acl_dir)
    assert acl.allowed(WEB, "test.ping")
    assert acl.allowed(WEB, "service.status")
    assert acl.allowed(WEB, "anything.list_methods")
    assert not acl.allowed(WEB, "service.restart")
    assert not acl.allowed(WEB, "command.run")


def test_star_grants_every_method(acl_dir: Path) -> None:
    write_acl(acl_dir, "a.acl", f"{WEB} = *\n")
    assert make_acl(acl_dir).allowed(WEB, "command.run")


def test_key_without_methods_grants_nothing(acl_dir: Path) -> None:
    write_acl(acl_dir, "a.acl", f"{WEB} =\n")
    acl = make_acl(acl_dir)
    assert not acl.allowed(WEB, "test.ping")
    assert acl.grants() == {CA_KEY.lower(): ("*",), WEB: ()}


def test_crlf_line_endings(acl_dir: Path) -> None:
    (acl_dir / "a.acl").write_bytes(f"# x\r\n{WEB} = test.ping\r\n".encode())
    assert make_acl(acl_dir).allowed(WEB, "test.ping")


# --- certmaster override and default deny -----------------------------------------------


def test_certmaster_overrides_acls_grants_the_ca_everything(acl_dir: Path) -> None:
    acl = make_acl(acl_dir)
    assert acl.allowed(CA_KEY, "command.run")
    assert acl.allowed(CA_KEY.lower(), "anything.at_all")


def test_certmaster_override_off_gives_the_ca_nothing(acl_dir: Path) -> None:
    acl = make_acl(acl_dir, certmaster_overrides_acls=False)
    assert not acl.allowed(CA_KEY, "test.ping")
    with pytest.raises(AccessToMethodDenied):
        acl.check(CA_KEY, "test.ping")


def test_certmaster_override_off_still_honours_files(acl_dir: Path) -> None:
    write_acl(acl_dir, "a.acl", f"{CA_KEY} = test.ping\n")
    acl = make_acl(acl_dir, certmaster_overrides_acls=False)
    assert acl.allowed(CA_KEY, "test.ping")
    assert not acl.allowed(CA_KEY, "command.run")


def test_ca_key_is_matched_literally_not_as_a_glob(acl_dir: Path) -> None:
    acl = Acl(acl_dir, ca_key="ca*-1234")
    assert acl.allowed("ca*-1234", "test.ping")
    assert not acl.allowed("cattle-1234", "test.ping")


def test_no_ca_key_means_no_override(acl_dir: Path) -> None:
    acl = Acl(acl_dir, ca_key=None)
    assert acl.grants() == {}
    assert not acl.allowed(CA_KEY, "test.ping")


def test_default_deny(acl_dir: Path) -> None:
    write_acl(acl_dir, "a.acl", f"{WEB} = test.ping\n")
    acl = make_acl(acl_dir)
    assert not acl.allowed(DB, "test.ping")
    assert not acl.allowed(WEB, "test.add")
    assert not acl.allowed(WEB, "")
    assert not acl.allowed("", "test.ping")


def test_check_raises_naming_caller_method_and_directory(acl_dir: Path) -> None:
    acl = make_acl(acl_dir)
    acl.check(CA_KEY, "test.ping")
    with pytest.raises(AccessToMethodDenied) as info:
        acl.check(DB, "command.run")
    message = str(info.value)
    assert DB in message
    assert "command.run" in message
    assert str(acl_dir) in message
    assert f"'{DB} = command.run'" in message


def test_denial_message_does_not_echo_control_characters(acl_dir: Path) -> None:
    with pytest.raises(AccessToMethodDenied) as info:
        make_acl(acl_dir).check(DB, "test.ping\nforged line")
    assert "\n" not in str(info.value)


# --- reloading --------------------------------------------------------------------------


def test_reload_after_a_file_changes(acl_dir: Path) -> None:
    path = write_acl(acl_dir, "a.acl", f"{WEB} = test.ping\n")
    acl = make_acl(acl_dir)
    assert acl.allowed(WEB, "test.ping")
    path.write_text(f"{WEB} = test.add\n", encoding="utf-8")
    bump_mtime(path)
    assert acl.allowed(WEB, "test.add")
    assert not acl.allowed(WEB, "test.ping")


def test_reload_after_a_same_size_rewrite_with_a_new_mtime(acl_dir: Path) -> None:
    path = write_acl(acl_dir, "a.acl", f"{WEB} = test.aaaa\n")
    acl = make_acl(acl_dir)
    assert acl.allowed(WEB, "test.aaaa")
    path.write_text(f"{WEB} = test.bbbb\n", encoding="utf-8")
    bump_mtime(path)
    assert acl.allowed(WEB, "test.bbbb")
    assert not acl.allowed(WEB, "test.aaaa")


def test_reload_after_a_new_file_appears(acl_dir: Path) -> None:
    acl = make_acl(acl_dir)
    assert not acl.allowed(WEB, "test.ping")
    write_acl(acl_dir, "new.acl", f"{WEB} = test.ping\n")
    assert acl.allowed(WEB, "test.ping")


def test_reload_after_a_file_is_removed(acl_dir: Path) -> None:
    path = write_acl(acl_dir, "a.acl", f"{WEB} = test.ping\n")
    acl = make_acl(acl_dir)
    assert acl.allowed(WEB, "test.ping")
    path.unlink()
    assert not acl.allowed(WEB, "test.ping")
    assert acl.allowed(CA_KEY, "test.ping")


def test_directory_created_later_is_picked_up(tmp_path: Path) -> None:
    directory = tmp_path / "later"
    acl = make_acl(directory)
    assert not acl.allowed(WEB, "test.ping")
    write_acl(directory, "a.acl", f"{WEB} = test.ping\n")
    assert acl.allowed(WEB, "test.ping")


def test_unchanged_directory_is_not_re_read(acl_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_acl(acl_dir, "a.acl", f"{WEB} = test.ping\n")
    acl = make_acl(acl_dir)
    assert acl.allowed(WEB, "test.ping")
    import func_amqp.minion.acl as acl_module

    def fail(directory: Path) -> list[object]:
        raise AssertionError("re-read although nothing changed")

    monkeypatch.setattr(acl_module, "load_directory", fail)
    for _ in range(5):
        assert acl.allowed(WEB, "test.ping")


def test_concurrent_checks_during_reloads(acl_dir: Path) -> None:
    path = write_acl(acl_dir, "a.acl", f"{WEB} = test.ping\n")
    acl = make_acl(acl_dir)
    errors: list[BaseException] = []
    stop = threading.Event()

    def checker() -> None:
        try:
            while not stop.is_set():
                assert acl.allowed(CA_KEY, "test.ping")
                assert not acl.allowed(DB, "test.ping")
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=checker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for i in range(30):
        path.write_text(f"{WEB} = test.m{i}\n", encoding="utf-8")
        bump_mtime(path, i + 1)
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors
    assert acl.allowed(WEB, "test.m29")


# --- hostile and broken input -------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "just some words",
        " = test.ping",
        "a = b = c",
        f"{WEB}\x1b[2K = *",
        f"{WEB} = test.ping\x00",
        f"{WEB} = test.ping\u202e",
        f"{WEB} = test.ping\u2028*",
        f"{WEB}\x85 = *",
    ],
)
def test_bad_lines_are_skipped_with_a_warning(
    acl_dir: Path, caplog: pytest.LogCaptureFixture, line: str
) -> None:
    (acl_dir / "bad.acl").write_bytes(f"{DB} = test.ping\n{line}\n".encode("utf-8"))
    with caplog.at_level(logging.WARNING, logger="func_amqp.minion.acl"):
        acl = make_acl(acl_dir)
        assert acl.allowed(DB, "test.ping")
        assert not acl.allowed(WEB, "test.ping")
        assert not acl.allowed(WEB, "command.run")
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"{acl_dir / 'bad.acl'}:2" in m for m in messages), messages


def test_invalid_utf8_line_is_skipped(acl_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    (acl_dir / "a.acl").write_bytes(b"\xff\xfe = *\n" + f"{WEB} = test.ping\n".encode())
    with caplog.at_level(logging.WARNING):
        acl = make_acl(acl_dir)
        assert acl.allowed(WEB, "test.ping")
    assert any("a.acl:1" in r.getMessage() for r in caplog.records)


def test_bad_line_warns_once_per_load_not_per_call(
    acl_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_acl(acl_dir, "a.acl", "garbage\n")
    acl = make_acl(acl_dir)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            acl.allowed(WEB, "test.ping")
    assert len(caplog.records) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of their mode")
def test_unreadable_file_is_skipped_with_a_warning(
    acl_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_acl(acl_dir, "a.acl", f"{WEB} = test.ping\n")
    secret = write_acl(acl_dir, "b.acl", f"{DB} = test.ping\n")
    secret.chmod(0)
    try:
        with caplog.at_level(logging.WARNING):
            acl = make_acl(acl_dir)
            assert acl.allowed(WEB, "test.ping")
            assert not acl.allowed(DB, "test.ping")
    finally:
        secret.chmod(0o600)
    assert any("b.acl" in r.getMessage() for r in caplog.records)


def test_file_failing_to_read_is_skipped_with_a_warning(
    acl_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_acl(acl_dir, "a.acl", f"{WEB} = test.ping\n")
    write_acl(acl_dir, "b.acl", f"{DB} = test.ping\n")
    real_read_bytes = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.name == "b.acl":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with caplog.at_level(logging.WARNING):
        acl = make_acl(acl_dir)
        assert acl.allowed(WEB, "test.ping")
        assert not acl.allowed(DB, "test.ping")
    assert any("b.acl" in r.getMessage() and "Permission denied" in r.getMessage() for r in caplog.records)


def test_dangling_symlink_is_skipped_with_a_warning(
    acl_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (acl_dir / "gone.acl").symlink_to(acl_dir / "nowhere")
    write_acl(acl_dir, "a.acl", f"{WEB} = test.ping\n")
    with caplog.at_level(logging.WARNING):
        assert make_acl(acl_dir).allowed(WEB, "test.ping")
    assert any("gone.acl" in r.getMessage() for r in caplog.records)


def test_directory_named_like_an_acl_file_is_skipped(
    acl_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (acl_dir / "odd.acl").mkdir()
    write_acl(acl_dir, "a.acl", f"{WEB} = test.ping\n")
    with caplog.at_level(logging.WARNING):
        assert make_acl(acl_dir).allowed(WEB, "test.ping")
    assert any("odd.acl" in r.getMessage() for r in caplog.records)


def test_world_writable_file_is_skipped(acl_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_acl(acl_dir, "open.acl", f"{WEB} = *\n")
    path.chmod(0o666)
    with caplog.at_level(logging.WARNING):
        assert not make_acl(acl_dir).allowed(WEB, "test.ping")
    assert any("open.acl" in r.getMessage() for r in caplog.records)


def test_missing_directory_grants_nothing_but_the_ca(tmp_path: Path) -> None:
    acl = make_acl(tmp_path / "absent")
    assert not acl.allowed(WEB, "test.ping")
    assert acl.allowed(CA_KEY, "test.ping")
    with pytest.raises(AccessToMethodDenied):
        acl.check(WEB, "test.ping")


def test_parse_line() -> None:
    assert parse_line("  # c") is None
    assert parse_line("") is None
    assert parse_line("A-1 = x.y,z.*  w.v") == ("a-1", ("x.y", "z.*", "w.v"))


# --- describe ----------------------------------------------------------------------------


def test_describe_lists_grants_and_their_sources(acl_dir: Path) -> None:
    write_acl(acl_dir, "a.acl", f"# c\n{WEB} = test.ping, test.add\n")
    lines = make_acl(acl_dir).describe()
    text = "\n".join(lines)
    assert str(acl_dir) in lines[0]
    assert f"{CA_KEY.lower()} = *" in text
    assert "certmaster_overrides_acls" in text
    assert f"{WEB} = test.ping, test.add" in text
    assert f"{acl_dir / 'a.acl'}:2" in text


def test_describe_with_no_grants_says_everything_is_denied(tmp_path: Path) -> None:
    lines = Acl(tmp_path / "absent", ca_key=None).describe()
    assert any("denied" in line for line in lines[1:])
