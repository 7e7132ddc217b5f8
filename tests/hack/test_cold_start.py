"""The hack/ scripts on a new machine: no cache, no cluster state, nothing built yet.

Each script runs for real from an empty cache root and an empty state directory, so every
directory it writes into must be one it creates. Only the slow tools it drives (debootstrap,
podman, the Go and C compilers, the Debian package check) are stand-ins on PATH that do what
the real ones leave behind, so a setup step that writes into a directory nobody made fails here
in seconds instead of twenty minutes into a cold CI run. The real tools run in the cluster suites.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HACK = REPO / "hack"

# Stand-ins for the slow tools. Each appends its command line to $STANDIN_CALLS.
RECORD = 'echo "$(basename "$0") $*" >>"${STANDIN_CALLS}"\n'
STANDINS = {
    # Every package deps.sh asks about is installed (the cluster suites install them for real).
    "dpkg-query": "printf 'install ok installed'\n",
    # Cold podman: no image exists yet; import and build succeed.
    "podman": '[[ "$1 $2" == "image exists" ]] && exit 1\nexit 0\n',
    # A successful debootstrap leaves a root filesystem in its second-to-last argument.
    "debootstrap": 'rootfs="${@: -2:1}"\n'
    'mkdir -p "${rootfs}/etc" "${rootfs}/var/cache/apt/archives"\n'
    'echo "ID=debian" >"${rootfs}/etc/os-release"\n',
    # `go build -o DIR/ PKG...` leaves an executable per package in DIR, `go build -o OUT`
    # and `cc -o OUT` one at OUT.
    "go": "while (( $# )); do\n"
    "  if [[ $1 == -o ]]; then out=$2; shift 2\n"
    '    if [[ $out == */ ]]; then for p in "$@"; do targets+=("$out$(basename "$p")"); done\n'
    '    else targets=("$out"); fi\n'
    '    for t in "${targets[@]}"; do printf "#!/bin/sh\\n" >"$t"; chmod +x "$t"; done; exit 0\n'
    "  fi; shift\n"
    "done\n",
}
STANDINS["cc"] = STANDINS["go"]
FAILING_DEBOOTSTRAP = 'echo "E: Failed getting release file" >&2\nexit 1\n'


@pytest.fixture
def cold(tmp_path: Path) -> dict[str, str]:
    """The environment of a new machine: an empty HOME, and stand-ins first on PATH."""
    home, shims = tmp_path / "home", tmp_path / "shims"
    home.mkdir()
    shims.mkdir()
    for name, body in STANDINS.items():
        write_standin(shims / name, body)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBETRAIN_", "XDG_"))}
    env |= {
        "HOME": str(home),
        "PATH": f"{shims}:{os.environ['PATH']}",
        "KUBETRAIN_STATE": str(tmp_path / "state"),
        "STANDIN_CALLS": str(tmp_path / "calls.log"),
    }
    return env


def write_standin(path: Path, body: str) -> None:
    path.write_text(f"#!/usr/bin/env bash\n{RECORD}{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def run(script: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HACK / script), *args], env=env, capture_output=True, text=True, timeout=120
    )


def cache_root(env: dict[str, str]) -> Path:
    return Path(env["HOME"]) / ".cache" / "kubetrain"


def test_a_failed_debootstrap_points_at_a_log_that_exists(cold: dict[str, str]) -> None:
    write_standin(Path(cold["PATH"].split(":")[0]) / "debootstrap", FAILING_DEBOOTSTRAP)

    proc = run("images/build.sh", cold)

    assert proc.returncode != 0
    named = re.search(r"debootstrap failed, see (\S+)", proc.stderr)
    assert named, proc.stderr
    assert "Failed getting release file" in Path(named.group(1)).read_text()


def test_images_build_from_an_empty_cache(cold: dict[str, str]) -> None:
    proc = run("images/build.sh", cold)

    assert proc.returncode == 0, proc.stderr
    images = cache_root(cold) / "images"
    assert (images / "base-bookworm.tar").is_file()
    assert {p.name for p in images.glob("*.log")} >= {"operator.log", "trainer.log"}
    assert "cluster not running" in proc.stderr
    builds = [c for c in Path(cold["STANDIN_CALLS"]).read_text().splitlines() if " build " in c]
    assert len(builds) == 2


def test_cluster_binaries_build_into_an_empty_cache(cold: dict[str, str]) -> None:
    proc = run("cluster/build.sh", cold)

    assert proc.returncode == 0, proc.stderr
    current = cache_root(cold) / "bin" / "current"
    components = ("kube-apiserver", "kubelet", "etcd", "coredns", "local-path-provisioner")
    components += ("kube-router", "metrics-server")
    for component in (*components, "pause", "kubectl"):
        assert os.access(current / component, os.X_OK), component


def test_the_cluster_pki_and_kubeconfigs_are_made_in_an_empty_state_directory(
    cold: dict[str, str],
) -> None:
    proc = run("cluster/pki.sh", cold)

    assert proc.returncode == 0, proc.stderr
    pki = Path(cold["KUBETRAIN_STATE"]) / "pki"
    assert "certificate-authority-data" in (pki / "admin.kubeconfig").read_text()
    assert "client-certificate-data" in (pki / "metrics-server.kubeconfig").read_text()
    minted = run("cluster/kubeconfig.sh", cold, "alice", "developers")
    assert minted.returncode == 0, minted.stderr
    assert "client-certificate-data" in minted.stdout


def test_status_of_a_cluster_never_started_says_stopped(cold: dict[str, str]) -> None:
    proc = run("cluster/status.sh", cold)

    assert proc.returncode != 0
    assert "kube-apiserver" in proc.stdout and "stopped" in proc.stdout
    assert "No such file" not in proc.stderr


def test_the_s3_server_builds_into_an_empty_cache_once(cold: dict[str, str]) -> None:
    first = run("s3/build.sh", cold)
    second = run("s3/build.sh", cold)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert os.access(cache_root(cold) / "bin" / "current" / "versitygw", os.X_OK)
    calls = Path(cold["STANDIN_CALLS"]).read_text().splitlines()
    assert [c.split()[:2] for c in calls] == [["go", "build"]], calls
