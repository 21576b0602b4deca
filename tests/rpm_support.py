"""Making SRPMs for tests with the host's rpmbuild (Debian's ``rpm`` package has it).

The same commands work by hand::

    rpmbuild -bs --define "_topdir $T" --define "_sourcedir $SPECDIR" \
        --define "_srcrpmdir $OUT" hello-func.spec
"""

from __future__ import annotations

import contextlib
import http.server
import importlib
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

from func_amqp.minion.loader import shipped_modules_dir

ROOT = Path(__file__).resolve().parents[1]
HELLO_SPEC = ROOT / "examples" / "hello-func" / "hello-func.spec"
FAKE_MOCK = ROOT / "tests" / "fixtures" / "fake-mock"

RPMBUILD = shutil.which("rpmbuild")
RPM = shutil.which("rpm")
MISSING_RPM_TOOLS = (
    None
    if RPMBUILD and RPM
    else "rpmbuild/rpm not installed (Debian: apt-get install -y rpm)"
)


def build_srpm(spec: Path, outdir: Path) -> Path:
    """Build the SRPM of ``spec`` into ``outdir``; sources are looked up next to the spec."""
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="srpm-top-") as topdir:
        completed = subprocess.run(
            [
                "rpmbuild", "-bs",
                "--define", f"_topdir {topdir}",
                "--define", f"_sourcedir {spec.parent}",
                "--define", f"_srcrpmdir {outdir}",
                str(spec),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
    if completed.returncode != 0:
        raise RuntimeError(f"rpmbuild -bs {spec} failed:\n{completed.stdout}{completed.stderr}")
    for line in completed.stdout.splitlines():
        if line.startswith("Wrote: "):
            return Path(line[len("Wrote: "):].strip())
    raise RuntimeError(f"rpmbuild -bs {spec} did not say what it wrote:\n{completed.stdout}")


def write_spec(path: Path, name: str, build_script: str = "", build_requires: str = "") -> Path:
    """A noarch spec like hello-func's, with a chosen %build (``exit 3`` to fail)."""
    requires = f"BuildRequires:  {build_requires}\n" if build_requires else ""
    path.write_text(
        f"""Name:           {name}
Version:        1.0
Release:        1
Summary:        Test package {name}
License:        MIT
URL:            https://example.org/{name}
BuildArch:      noarch
{requires}
%description
Test package.

%prep

%build
{build_script}

%install
mkdir -p %{{buildroot}}%{{_datadir}}/{name}
echo {name} > %{{buildroot}}%{{_datadir}}/{name}/{name}.txt

%files
%{{_datadir}}/{name}/{name}.txt

%changelog
* Mon Jan 06 2025 Tester <test@example.org> - 1.0-1
- Test.
""",
        encoding="utf-8",
    )
    return path


def _createrepo_c() -> str | None:
    """Where the minion's createrepo module finds the command (beside this Python, as
    the PyPI wheel installs it into a venv, else on PATH)."""
    shipped_modules_dir()  # makes func_amqp.modules importable from a source tree
    module = importlib.import_module("func_amqp.modules.createrepo")
    try:
        return str(module.find_command("createrepo_c"))
    except module.CreaterepoNotFound:
        return None


DNF = shutil.which("dnf")
MISSING_PIPELINE_TOOLS = (
    None
    if RPMBUILD and RPM and DNF and _createrepo_c()
    else "needs rpmbuild, rpm, dnf (Debian: apt-get install -y rpm dnf) and createrepo_c (pip install createrepo-c)"
)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files and logs nothing (test output stays readable)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_directory(root: Path, handler: type[http.server.SimpleHTTPRequestHandler] = QuietHandler) -> Iterator[str]:
    """Serve ``root`` over HTTP on localhost; yields its URL (with a trailing slash)."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a, **k: handler(*a, directory=str(root), **k)
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def dnf_available(repo_file: Path, workdir: Path, package: str) -> str:
    """What dnf, configured by ``repo_file`` alone, offers for ``package``."""
    reposdir = workdir / "repos.d"
    reposdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(repo_file, reposdir)
    completed = subprocess.run(
        [
            "dnf", "-q", f"--installroot={workdir / 'installroot'}", "--releasever=12",
            f"--setopt=reposdir={reposdir}", "repoquery", "--available",
            "--qf", "%{name}-%{version}-%{release}.%{arch} %{reponame}", package,
        ],
        capture_output=True, text=True, timeout=180, check=True,
    )
    return completed.stdout
