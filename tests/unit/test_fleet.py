"""``musedrp serve``: secrets in files of their own, and one Ctrl-C as one SIGTERM per service."""

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest

from musedrp import serve, storage

SECRETS = {"MUSEDRP_S3_SECRET_KEY": "s3-secret", "MUSEDRP_AMQP_PASSWORD": "amqp-secret"}


@pytest.fixture
def offline(monkeypatch):
    """``serve.prepare`` with no ``MUSEDRP_*`` set and no broker or database to reach."""
    for name in list(os.environ):
        if name.startswith("MUSEDRP_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(serve, "ensure_broker", lambda _: None)
    monkeypatch.setattr(serve, "ensure_database", lambda _: None)


@pytest.mark.parametrize("own_s3", [False, True])
def test_secrets_are_readable_by_this_user_only(tmp_path, monkeypatch, offline, own_s3):
    monkeypatch.setattr(serve, "_create_bucket", lambda _: None)
    monkeypatch.setattr(serve.s3server, "start", lambda _: SimpleNamespace(
        endpoint="http://127.0.0.1:9", access_key="musedrp", secret_key="s3-secret"))
    env = {**SECRETS, "MUSEDRP_DB_URL": "postgresql+psycopg://u:db-secret@127.0.0.1/musedrp"}
    if not own_s3:  # serve uses the configured S3; else it starts one, whose secret is its own
        env["MUSEDRP_S3_ENDPOINT"] = "http://127.0.0.1:9"
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    services_env, _ = serve.prepare(tmp_path, s3=own_s3)

    text = (tmp_path / serve.ENV_FILE).read_text()
    assert not [secret for secret in SECRETS.values() if secret in text]
    assert not set(SECRETS) & set(services_env)
    written = [tmp_path / serve.ENV_FILE, *(tmp_path / "secrets").iterdir()]
    assert len(written) == 3
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {"0o600"}
    for name in env:
        monkeypatch.delenv(name)
    s = serve.settings_for(tmp_path)  # what submit, status and the services read
    assert (s.s3_secret_key.get_secret_value(), s.amqp_password.get_secret_value()) == (
        "s3-secret", "amqp-secret")


def test_without_a_configured_s3_the_objects_live_in_a_directory_of_the_state_dir(
        tmp_path, monkeypatch, offline):
    """One machine: no S3 server to spend the recipes' cores; submit and the services find
    the same directory through the env file."""
    monkeypatch.setattr(serve.s3server, "start", lambda _: pytest.fail("an S3 server started"))

    env, server = serve.prepare(tmp_path / "state")

    assert server is None
    assert env["MUSEDRP_S3_ENDPOINT"] == f"file://{tmp_path / 'state' / 'store'}"
    store = storage.open_store(serve.settings_for(tmp_path / "state"))
    assert isinstance(store, storage.LocalStore) and store.root == tmp_path / "state" / "store"


SERVICE = """
import signal, sys, time
from pathlib import Path

out, name = Path(sys.argv[1]), sys.argv[2]
got = []

def record(signum, _frame):
    got.append(signal.Signals(signum).name)
    (out / f"{name}.signals").write_text(" ".join(got))

signal.signal(signal.SIGINT, record)
signal.signal(signal.SIGTERM, record)
(out / f"{name}.ready").touch()
deadline = time.monotonic() + 60
while not got and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(1)  # finishing its message, as a service does: a second signal would come now
"""

SERVE = """
import sys
from pathlib import Path
from musedrp import serve

out = Path(sys.argv[1])
serve.SERVICE_COMMAND = (sys.executable, sys.argv[2], str(out))
serve.prepare = lambda *_: ({"MUSEDRP_S3_ENDPOINT": "http://127.0.0.1:9"}, None)
sys.exit(serve.serve(out, ["a", "b"]))
"""


def test_ctrl_c_reaches_each_service_once(tmp_path):
    """Ctrl-C signals the terminal's foreground process group: serve, and before the fix its
    services too, which then took serve's own SIGTERM as the second signal that kills."""
    (tmp_path / "service.py").write_text(textwrap.dedent(SERVICE))
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(tmp_path),  # noqa: S603
                             str(tmp_path / "service.py")], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"{n}.ready").exists() for n in "ab"):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)  # as the terminal does on Ctrl-C
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert {n: (tmp_path / f"{n}.signals").read_text() for n in "ab"} == {
        "a": "SIGTERM", "b": "SIGTERM"}
