#!/usr/bin/env python3
"""The build farm's main job, as a build backend would drive it through the Overlord API:

1. make the SRPM of a spec (here, with the local rpmbuild);
2. have a builder minion build it (``mock.build``: mock, or rpmbuild where mock is missing);
3. add the build to the chroot's repository (``createrepo.update``);
4. regenerate the web pages and .repo files (``repopublish.publish``);
5. serve the results over HTTP and ask dnf, configured only by the generated .repo file,
   what it offers.

The builder and this script share one machine here, so the builder's results folder is
served directly; in production a web server points at the builders' results.

    python examples/build_farm.py --minion builder1
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_SPEC = HERE / "hello-func" / "hello-func.spec"
sys.path.insert(0, str(HERE.parent))  # run from a source checkout: its tests' helpers

from func_amqp.overlord.caller import CallEvent  # noqa: E402
from func_amqp.overlord.client import Overlord  # noqa: E402
from func_amqp.utils import is_error  # noqa: E402
from tests.rpm_support import dnf_available, serve_directory  # noqa: E402


def make_srpm(spec: Path, outdir: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="srpm-top-") as top:
        subprocess.run(
            [
                "rpmbuild", "-bs", "--define", f"_topdir {top}", "--define", f"_sourcedir {spec.parent}",
                "--define", f"_srcrpmdir {outdir}", str(spec),
            ],
            check=True, capture_output=True, text=True,
        )
    return next(outdir.glob("*.src.rpm"))


def show(event: CallEvent) -> None:
    if event.progress is not None:
        print(f"  {event.minion}: {event.progress.phase} {event.progress.message}".rstrip(), flush=True)


def checked(what: str, result: Any) -> Any:
    if is_error(result):
        sys.exit(f"{what} failed on the minion: {result[1]}: {result[2]}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minion", required=True, help="the builder minion's name")
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    parser.add_argument("--chroot", default="fedora-40-x86_64")
    parser.add_argument("--owner", default="demo")
    parser.add_argument("--project", default="hello")
    args = parser.parse_args()
    if not shutil.which("rpmbuild") or not shutil.which("dnf"):
        sys.exit("this demo needs rpmbuild and dnf (Debian: apt-get install rpm dnf)")

    builder = Overlord(args.minion, noglobs=True, timeout=3600)
    with tempfile.TemporaryDirectory(prefix="func-amqp-demo-") as work:
        workdir = Path(work)
        srpm = make_srpm(args.spec, workdir / "srpm")
        print(f"1. SRPM: {srpm.name}")

        print(f"2. building on {args.minion} ...")
        options = {"owner": args.owner, "project": args.project}
        build = checked("mock.build", builder.run("mock", "build", [str(srpm), args.chroot, options], on_event=show))
        if build["status"] != "succeeded":
            print("\n".join(build["log_tail"]))
            sys.exit(f"the build ended as {build['status']}")
        result_dir = Path(build["result_dir"])
        print(f"   {build['status']} with {build['backend']}: {result_dir}")

        repo_dir = result_dir.parent
        repo = checked("createrepo.update", builder.createrepo.update(str(repo_dir), [result_dir.name]))
        print(f"3. repository {repo_dir}: {repo['package_count']} packages")

        results_root = repo_dir.parents[2]
        with serve_directory(results_root) as url:
            published = checked("repopublish.publish", builder.repopublish.publish(str(results_root), url))
            repo_file = results_root / next(f for f in published["repo_files"] if args.chroot in f)
            print(f"4. published {len(published['index_pages'])} pages; .repo file: {repo_file}")
            offered = dnf_available(repo_file, workdir / "dnf", args.spec.stem)
        print(f"5. dnf offers:\n   {offered.strip() or '(nothing)'}")
        return 0 if offered.strip() else 1


if __name__ == "__main__":
    sys.exit(main())
