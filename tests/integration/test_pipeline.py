"""The build farm's main job end to end: SRPM -> build on a minion -> repository ->
published web pages and .repo files -> dnf sees the package.

Real RabbitMQ, real funcd, real rpmbuild (the rpmbuild backend), real createrepo_c,
real dnf; the published tree is served over HTTP on localhost.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from func_amqp import utils
from func_amqp.overlord.client import Overlord
from tests.conftest import BOTH_TRANSPORTS, MinionFactory
from tests.rpm_support import HELLO_SPEC, MISSING_PIPELINE_TOOLS, build_srpm, dnf_available, serve_directory

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(MISSING_PIPELINE_TOOLS is not None, reason=MISSING_PIPELINE_TOOLS or ""),
]

TRANSPORTS = BOTH_TRANSPORTS
CHROOT = "fedora-40-x86_64"


def test_srpm_to_dnf(minions: MinionFactory, prefix: str, tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    name = f"{prefix}-builder"
    minions.start(name, modules={"Mock": f"backend = rpmbuild\nresult_root = {results}\n"})
    srpm = build_srpm(HELLO_SPEC, tmp_path / "srpm")
    builder = Overlord(name, noglobs=True, timeout=600)

    events: list[object] = []
    build = builder.run("mock", "build", [str(srpm), CHROOT, {"owner": "demo", "project": "hello", "build_id": 7}], on_event=events.append)
    assert not utils.is_error(build), build
    assert build["status"] == "succeeded" and build["backend"] == "rpmbuild"
    result_dir = Path(build["result_dir"])
    assert result_dir == results / "demo" / "hello" / CHROOT / "00000007-hello-func"
    assert (result_dir / "success").read_text().strip() == "done"
    assert {p["arch"] for p in build["packages"]} == {"src", "noarch"}
    assert events, "the build reported no progress"

    repo_dir = results / "demo" / "hello" / CHROOT
    repo = builder.createrepo.update(str(repo_dir), [result_dir.name])
    assert not utils.is_error(repo), repo
    assert repo["package_count"] == 2

    with serve_directory(results) as url:
        published = builder.repopublish.publish(str(results), url)
        assert not utils.is_error(published), published
        assert f"demo/hello/demo-hello-{CHROOT}.repo" in published["repo_files"]
        page = (results / "demo" / "hello" / "index.html").read_text()
        assert "hello-func" in page and f"demo-hello-{CHROOT}.repo" in page
        offered = dnf_available(results / "demo" / "hello" / f"demo-hello-{CHROOT}.repo", tmp_path / "dnf", "hello-func")
    assert "hello-func-1.0-1.noarch copr:127.0.0.1:demo:hello" in offered
