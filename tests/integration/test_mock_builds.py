"""Real builds through the ``mock`` module: the host's rpmbuild, and mock's test double.

No broker is needed: the module class is called directly inside a bound CallContext
that records its progress reports and log lines, as the minion would forward them.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from func_amqp.config import MinionConfig, Paths
from func_amqp.errors import ArgumentError
from func_amqp.minion import progress
from func_amqp.minion.loader import shipped_modules_dir
from func_amqp.minion.modules import func_module
from tests.rpm_support import FAKE_MOCK, HELLO_SPEC, MISSING_RPM_TOOLS, QuietHandler, build_srpm, serve_directory, write_spec

pytestmark = pytest.mark.skipif(MISSING_RPM_TOOLS is not None, reason=MISSING_RPM_TOOLS or "")

CHROOT = "fedora-40-x86_64"
HELLO_SRPM_NAME = "hello-func-1.0-1.src.rpm"
HELLO_PACKAGES = [
    {"name": "hello-func", "epoch": None, "version": "1.0", "release": "1", "arch": "noarch"},
    {"name": "hello-func", "epoch": None, "version": "1.0", "release": "1", "arch": "src"},
]
# The fake dies on SIGINT at once; anything near process.run's TERM/KILL escalation is a bug.
STOP_BOUND = 8.0
CHILD_PID_FILE = "fake-mock-child.pid"


def _load() -> ModuleType:
    shipped_modules_dir()
    return importlib.import_module("func_amqp.modules.mock")


mock_module = _load()


@dataclass
class Recorder:
    """A call context that keeps what the module reported."""

    context: progress.CallContext = field(init=False)
    phases: list[str] = field(default_factory=list)
    reports: list[progress.Progress] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.context = progress.CallContext(
            call_id="test-call", on_progress=self._progress, on_log=self.lines.extend
        )

    def _progress(self, report: progress.Progress) -> None:
        self.reports.append(report)
        if not self.phases or self.phases[-1] != report.phase:
            self.phases.append(report.phase)


@pytest.fixture(scope="module")
def srpms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sample package's SRPM, a failing one and one with a missing BuildRequires."""
    base = tmp_path_factory.mktemp("srpms")
    specs = base / "specs"
    specs.mkdir()
    return {
        "hello": build_srpm(HELLO_SPEC, base / "out"),
        "failing": build_srpm(write_spec(specs / "fails.spec", "fails", "echo breaking; exit 3"), base / "out"),
        "deps": build_srpm(
            write_spec(specs / "needs.spec", "needs", build_requires="no-such-package-xyz"), base / "out"
        ),
    }


@pytest.fixture
def module(tmp_path: Path) -> Iterator[Any]:
    """A Mock module with its state under tmp_path, the rpmbuild backend by default."""
    func_module.configure(MinionConfig(), Paths(config_dir=tmp_path / "conf", state_dir=tmp_path / "state"))
    instance = mock_module.Mock()
    instance.options.result_root = str(tmp_path / "results")
    instance.options.backend = "rpmbuild"
    try:
        yield instance
    finally:
        func_module.configure()


@pytest.fixture
def fake_mock(module: Any) -> Any:
    """The module, with the mock backend running the test double (found as 'mock' would be)."""
    module.options.backend = "auto"
    module.options.mock_command = str(FAKE_MOCK)
    return module


def build(
    module: Any, srpm: str | Path, options: dict[str, Any] | None = None, chroot: str = CHROOT
) -> tuple[dict[str, Any], Recorder]:
    recorder = Recorder()
    with progress.bound(recorder.context):
        result = module.build(str(srpm), chroot, options)
    json.dumps(result)  # plain data, fit for the wire
    return result, recorder


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def assert_gone(pid: int, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while alive(pid):
        assert time.monotonic() < deadline, f"process {pid} outlived the build"
        time.sleep(0.05)


def assert_success_layout(result: dict[str, Any], expected_dir: Path) -> None:
    result_dir = Path(result["result_dir"])
    assert result_dir == expected_dir
    assert (result_dir / "success").read_text() == "done"
    assert json.loads((result_dir / "results.json").read_text()) == {"packages": HELLO_PACKAGES}
    assert result["packages"] == HELLO_PACKAGES
    assert (result_dir / "hello-func-1.0-1.noarch.rpm").is_file()
    assert (result_dir / HELLO_SRPM_NAME).is_file()
    assert (result_dir / "build.log").is_file()
    assert result["log_tail"] == []


# --- rpmbuild backend ---------------------------------------------------------------------------


def test_rpmbuild_success_in_copr_layout(module: Any, srpms: dict[str, Path], tmp_path: Path) -> None:
    result, rec = build(module, srpms["hello"], {"build_id": 42, "owner": "alice", "project": "demo"})
    assert result["status"] == "succeeded", result
    assert (result["backend"], result["chroot"], result["returncode"]) == ("rpmbuild", CHROOT, 0)
    assert result["duration"] > 0
    assert_success_layout(result, tmp_path / "results" / "alice" / "demo" / CHROOT / "00000042-hello-func")
    assert "install" in rec.phases and rec.phases[-1] == "finish"
    assert any(line.startswith("Wrote: ") for line in rec.lines)
    assert "Executing(%install)" in (Path(result["result_dir"]) / "build.log").read_text()
    assert not list((tmp_path / "state" / "build-work").iterdir())


def test_rpmbuild_default_root_and_generated_id(module: Any, srpms: dict[str, Path], tmp_path: Path) -> None:
    module.options.result_root = ""
    result, _ = build(module, srpms["hello"], {"define": {"packager": "Tester"}, "no_clean": True})
    result_dir = Path(result["result_dir"])
    assert result["status"] == "succeeded", result
    assert result_dir.parent == tmp_path / "state" / "builds" / CHROOT
    build_id, name = result_dir.name.split("-", 1)
    assert name == "hello-func" and len(build_id) >= 8 and build_id.isdigit()


def test_rpmbuild_failing_build(module: Any, srpms: dict[str, Path]) -> None:
    result, rec = build(module, srpms["failing"], {"build_id": 1})
    assert result["status"] == "build_failed", result
    assert result["returncode"] != 0 and result["packages"] == []
    assert any("Bad exit status" in line for line in result["log_tail"])
    assert any("breaking" in line for line in rec.lines)
    assert "build" in rec.phases and rec.phases[-1] == "finish"
    assert not (Path(result["result_dir"]) / "success").exists()
    assert not (Path(result["result_dir"]) / "results.json").exists()


def test_rpmbuild_missing_build_requires(module: Any, srpms: dict[str, Path]) -> None:
    result, _ = build(module, srpms["deps"])
    assert result["status"] == "deps_or_srpm_failed", result
    assert any("Failed build dependencies" in line for line in result["log_tail"])


def test_missing_srpm_path(module: Any, tmp_path: Path) -> None:
    result, _ = build(module, tmp_path / "gone-1.0-1.src.rpm")
    assert result["status"] == "deps_or_srpm_failed"
    assert result["returncode"] is None
    assert "not found" in result["message"] and any("not found" in line for line in result["log_tail"])


def test_corrupt_srpm_is_refused_before_rpmbuild(module: Any, tmp_path: Path) -> None:
    corrupt = tmp_path / "x-1-1.src.rpm"
    corrupt.write_bytes(random.Random(1).randbytes(4096))
    result, _ = build(module, corrupt)
    assert (result["status"], result["returncode"]) == ("deps_or_srpm_failed", None)
    assert "not an RPM" in result["message"]


def test_truncated_srpm_is_blamed_from_rpmbuilds_output(module: Any, srpms: dict[str, Path], tmp_path: Path) -> None:
    truncated = tmp_path / "hello-func-1.0-1.src.rpm"
    truncated.write_bytes(srpms["hello"].read_bytes()[:200])
    result, _ = build(module, truncated)
    assert result["status"] == "deps_or_srpm_failed", result
    assert result["returncode"] not in (None, 0)


def test_srpm_that_is_not_a_src_rpm_is_an_argument_error(module: Any, tmp_path: Path) -> None:
    with pytest.raises(ArgumentError, match="src.rpm"):
        build(module, tmp_path / "notes.txt")
    with pytest.raises(ArgumentError, match="absolute"):
        build(module, "hello-func-1.0-1.src.rpm")


def test_file_url(module: Any, srpms: dict[str, Path], tmp_path: Path) -> None:
    result, _ = build(module, srpms["hello"].as_uri(), {"build_id": 3})
    assert result["status"] == "succeeded", result
    assert_success_layout(result, tmp_path / "results" / CHROOT / "00000003-hello-func")


def test_configured_backend_missing_is_a_config_error(module: Any, srpms: dict[str, Path]) -> None:
    module.options.backend = "mock"
    module.options.mock_command = "/nonexistent/mock"
    result, _ = build(module, srpms["hello"])
    assert (result["status"], result["backend"]) == ("config_error", "mock")
    assert "not found" in result["message"]


# --- mock backend through the test double ---------------------------------------------------------


def test_fake_mock_success(fake_mock: Any, srpms: dict[str, Path], tmp_path: Path) -> None:
    options = {
        "build_id": 9, "uniqueext": "u1", "no_clean": True, "enable_network": True,
        "define": {"packager": "Tester"}, "with": ["foo"], "without": ["bar"],
        "isolation": "simple", "bootstrap_chroot": False,
    }
    result, rec = build(fake_mock, srpms["hello"], options)
    assert result["status"] == "succeeded", result
    assert (result["backend"], result["returncode"]) == ("mock", 0)
    assert_success_layout(result, tmp_path / "results" / CHROOT / "00000009-hello-func")
    result_dir = Path(result["result_dir"])
    assert "chroot init" in rec.phases
    assert f"rpmbuild {HELLO_SRPM_NAME}" in rec.phases
    assert rec.phases[-1] == "finish"
    assert any(line.startswith("Wrote: ") for line in rec.lines), "build.log lines are streamed"
    seen = json.loads((result_dir / "root.log").read_text().split("fake-mock options: ", 1)[1].splitlines()[0])
    assert seen == {
        "root": CHROOT, "uniqueext": "u1", "no_clean": True, "enable_network": True,
        "define": ["packager Tester"], "with": ["foo"], "without": ["bar"],
        "isolation": "simple", "bootstrap": False,
    }
    assert "Finish: run" in (result_dir / "state.log").read_text()
    assert "INFO: Done(fake)" in (result_dir / "builder-live.log").read_text()


def test_fake_mock_failing_build(fake_mock: Any, srpms: dict[str, Path]) -> None:
    result, _ = build(fake_mock, srpms["failing"])
    assert (result["status"], result["returncode"]) == ("build_failed", 10)
    assert any("Bad exit status" in line for line in result["log_tail"])
    assert result["packages"] == []


@pytest.mark.parametrize(
    ("code", "status"),
    [(30, "deps_or_srpm_failed"), (3, "config_error"), (20, "infra_error"), (1, "infra_error")],
)
def test_fake_mock_exit_codes(
    fake_mock: Any, srpms: dict[str, Path], monkeypatch: pytest.MonkeyPatch, code: int, status: str
) -> None:
    monkeypatch.setenv("FAKE_MOCK_EXIT", str(code))
    result, _ = build(fake_mock, srpms["hello"])
    assert (result["status"], result["returncode"]) == (status, code)
    assert any(f"forced exit {code}" in line for line in result["log_tail"])


def test_fake_mock_timeout_ends_the_process_group(
    fake_mock: Any, srpms: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MOCK_SLEEP", "30")
    started = time.monotonic()
    result, rec = build(fake_mock, srpms["hello"], {"timeout": 1})
    assert time.monotonic() - started < STOP_BOUND
    assert result["status"] == "timeout", result
    assert "timed out" in result["message"]
    assert f"rpmbuild {HELLO_SRPM_NAME}" in rec.phases
    child = int((Path(result["result_dir"]) / CHILD_PID_FILE).read_text())
    assert_gone(child)
    assert not (Path(result["result_dir"]) / "success").exists()


def cancel_when_sleeping(recorder: Recorder, results: Path) -> threading.Thread:
    """Cancel the call once the fake's child sleeps, i.e. mid-build."""

    def wait_then_cancel() -> None:
        deadline = time.monotonic() + 20
        while not list(results.glob(f"*/*/{CHILD_PID_FILE}")) and time.monotonic() < deadline:
            time.sleep(0.05)
        recorder.context.cancel()

    thread = threading.Thread(target=wait_then_cancel, daemon=True)
    thread.start()
    return thread


def test_fake_mock_cancel_mid_build(
    fake_mock: Any, srpms: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FAKE_MOCK_SLEEP", "30")
    recorder = Recorder()
    canceller = cancel_when_sleeping(recorder, tmp_path / "results")
    with progress.bound(recorder.context):
        result = fake_mock.build(str(srpms["hello"]), CHROOT, None)
    canceller.join(5)
    assert result["status"] == "cancelled", result
    assert result["duration"] < STOP_BOUND
    child = int((Path(result["result_dir"]) / CHILD_PID_FILE).read_text())
    assert_gone(child)


def test_cancelled_before_start_runs_nothing(fake_mock: Any, srpms: dict[str, Path]) -> None:
    recorder = Recorder()
    recorder.context.cancel()
    with progress.bound(recorder.context):
        result = fake_mock.build(str(srpms["hello"]), CHROOT)
    assert (result["status"], result["returncode"]) == ("cancelled", None)
    assert not (Path(result["result_dir"]) / "state.log").exists()


def test_list_chroots(fake_mock: Any, tmp_path: Path) -> None:
    etc = tmp_path / "etc-mock"
    etc.mkdir()
    for name in ("fedora-40-x86_64.cfg", "epel-9-x86_64.cfg", "site-defaults.cfg"):
        (etc / name).write_text("")
    fake_mock.options.config_dirs = f"{etc}, {tmp_path / 'nowhere'}"
    assert fake_mock.list_chroots() == ["epel-9-x86_64", "fedora-40-x86_64"]


# --- downloads ----------------------------------------------------------------------------------


class _Handler(QuietHandler):
    """Serves files; ``/stream/<name>`` sends one without a Content-Length."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.startswith("/stream/"):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"\xed\xab\xee\xdb" + b"\0" * 5000)
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def http_root(tmp_path: Path, srpms: dict[str, Path]) -> Iterator[str]:
    """A local web server on 127.0.0.1 serving the SRPMs."""
    root = tmp_path / "www"
    root.mkdir()
    shutil.copy(srpms["hello"], root)
    with serve_directory(root, _Handler) as url:
        yield url.rstrip("/")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_http_download(module: Any, http_root: str, tmp_path: Path) -> None:
    result, rec = build(module, f"{http_root}/{HELLO_SRPM_NAME}", {"build_id": 11})
    assert result["status"] == "succeeded", result
    assert rec.phases[0] == "download"
    assert_success_layout(result, tmp_path / "results" / CHROOT / "00000011-hello-func")
    assert any(line.startswith("downloaded ") for line in rec.lines)


def test_http_download_with_fake_mock(fake_mock: Any, http_root: str) -> None:
    result, rec = build(fake_mock, f"{http_root}/{HELLO_SRPM_NAME}")
    assert (result["status"], result["backend"]) == ("succeeded", "mock")
    assert rec.phases[0] == "download"


def test_oversized_download_is_refused(module: Any, http_root: str) -> None:
    module.options.download_limit_bytes = 100
    result, _ = build(module, f"{http_root}/{HELLO_SRPM_NAME}")
    assert (result["status"], result["returncode"]) == ("deps_or_srpm_failed", None)
    assert "limit" in result["message"]
    assert sorted(p.name for p in Path(result["result_dir"]).iterdir()) == ["build.log"]


def test_oversized_download_without_content_length(module: Any, http_root: str) -> None:
    module.options.download_limit_bytes = 1000
    result, _ = build(module, f"{http_root}/stream/big-1-1.src.rpm")
    assert result["status"] == "deps_or_srpm_failed"
    assert "limit" in result["message"]
    assert not any(p.name.endswith(".part") for p in Path(result["result_dir"]).iterdir())


def test_download_not_found(module: Any, http_root: str) -> None:
    result, _ = build(module, f"{http_root}/missing-1-1.src.rpm")
    assert result["status"] == "deps_or_srpm_failed"
    assert "404" in result["message"]


def test_download_from_nowhere_is_an_infra_error(module: Any) -> None:
    result, _ = build(module, "http://127.0.0.1:9/hello-func-1.0-1.src.rpm")
    assert result["status"] == "infra_error"
    assert "download" in result["message"]


def test_downloaded_garbage_is_refused(module: Any, http_root: str) -> None:
    module.options.download_limit_bytes = 10000
    result, _ = build(module, f"{http_root}/stream/junk-1-1.src.rpm")
    # the stream starts with the lead magic but is no package: rpmbuild blames the SRPM
    assert result["status"] == "deps_or_srpm_failed", result
    assert os.path.exists(Path(result["result_dir"]) / "junk-1-1.src.rpm")
