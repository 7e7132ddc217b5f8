"""A real S3-compatible server for the object-storage tests: versitygw on 127.0.0.1.

The object-storage code paths are tested against a real server, never a mock: versitygw
(built from the Go module proxy by hack/s3/build.sh) serves a temporary directory over the
S3 API, every bucket a directory under it. It runs as a plain process on a free loopback
port, so starting one takes well under a second once the binary is built.
"""

from __future__ import annotations

import http.client
import os
import secrets
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import s3fs

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "hack" / "s3" / "build.sh"
# A cold build downloads and compiles versitygw: a few minutes on 2 cores.
BUILD_TIMEOUT = 1800.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def cache_root() -> Path:
    """KT_CACHE exactly as hack/cluster/lib.sh computes it, to find what build.sh linked."""
    if root := os.environ.get("KUBETRAIN_CACHE"):
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "kubetrain"


def versitygw_binary() -> Path:
    """The linked versitygw (lib.sh's KT_BIN), built first if this machine has none yet."""
    binary = cache_root() / "bin" / "current" / "versitygw"
    if not os.access(binary, os.X_OK):
        subprocess.run([str(BUILD_SCRIPT)], check=True, timeout=BUILD_TIMEOUT)
    return binary


def free_port() -> int:
    """A port nothing listens on right now; a race with another process shows as an early exit."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class S3Server:
    """versitygw in posix mode over a directory, with credentials generated per instance.

    A context manager: entering starts the server and waits until it answers,
    leaving stops it. With ``workdir`` given, the data (``workdir/data``) and the server's
    log (``workdir/versitygw.log``) stay there for the caller; without, both live in a
    temporary directory that is removed on stop.
    """

    region = "us-east-1"

    def __init__(self, workdir: Path | None = None) -> None:
        self._own_dir: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._own_dir = tempfile.TemporaryDirectory(prefix="kubetrain-s3-")
            workdir = Path(self._own_dir.name)
        self.workdir = workdir
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "versitygw.log"
        self.access_key = "KT" + secrets.token_hex(9).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.port = 0
        # Only this server answers 200 there: a port taken by someone else between
        # free_port() and versitygw's bind is not mistaken for it.
        self._health_path = f"/kubetrain-health-{secrets.token_hex(8)}"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int | None = None) -> None:
        """Start on `port` (a restart keeps its clients' endpoint), or on a free one."""
        binary = versitygw_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        # A minimal environment: versitygw reads many VGW_* and ROOT_* variables, and the
        # caller's must not change it. The credentials go there too, not on the command line.
        env = {
            "PATH": os.environ.get("PATH", ""),
            "ROOT_ACCESS_KEY_ID": self.access_key,
            "ROOT_SECRET_ACCESS_KEY": self.secret_key,
        }
        cmd = [str(binary), "--port", f"127.0.0.1:{self.port}", "--quiet"]
        cmd += ["--health", self._health_path]
        cmd += ["posix", str(self.data_dir)]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"versitygw exited with {self._proc.returncode}: {self._log_tail()}"
                )
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
            try:
                conn.request("GET", self._health_path)
                if conn.getresponse().status == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            finally:
                conn.close()
            time.sleep(0.05)
        raise TimeoutError(
            f"versitygw not answering after {START_TIMEOUT:.0f} s: {self._log_tail()}"
        )

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        """Terminate, then kill if it lingers; remove the directory only if it is ours."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._own_dir is not None:
            self._own_dir.cleanup()

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """The standard AWS variables, for a process that should use this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }

    def filesystem(self, secret: str | None = None) -> s3fs.S3FileSystem:
        """A new s3fs client for this server (never a cached instance with stale listings)."""
        import s3fs

        return s3fs.S3FileSystem(
            key=self.access_key,
            secret=self.secret_key if secret is None else secret,
            endpoint_url=self.endpoint_url,
            client_kwargs={"region_name": self.region},
            skip_instance_cache=True,
        )

    def make_bucket(self, name: str) -> None:
        """Create a bucket with a plain CreateBucket.

        Not ``fs.mkdir(name)``: with a region set, s3fs sends it as the LocationConstraint,
        and S3 (AWS and versitygw alike) refuses "us-east-1" there as InvalidLocationConstraint.
        """
        fs = self.filesystem()
        fs.call_s3("create_bucket", Bucket=name)
        fs.invalidate_cache()
