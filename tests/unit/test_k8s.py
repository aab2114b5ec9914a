"""Kubernetes manifests, offline: every overlay renders and validates; workers are
Guaranteed with integer CPUs, sized from the stage memory models, given a grace period
longer than their recipe, and scaled on their own queue; no secret in a ConfigMap."""

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from musedrp import pieces
from musedrp.serve import SERVICES
from musedrp.topology import BY_NAME, TRANSFER_MARGIN_S, work_key

K8S = Path(__file__).parents[2] / "k8s"
# a full night: (raw frames per job, IFUs per job) — what the sizes must hold
FULL_NIGHT = {"bias": (11, 1), "flat": (11, 1), "wavecal": (15, 1), "lsf": (15, 1),
              "twilight": (8, 24), "scibasic": (2, 1), "standard": (0, 24), "sky": (0, 24),
              "scipost": (0, 24), "align": (3, 1),
              # 3 exposures, planned in the 3 wavelength pieces that fit the planner's 20 GB
              "combine": (0, 3 * 24 * pieces.fraction(3)), "stitch": (0, 1)}
UNITS = {"Gi": 2**30, "Mi": 2**20}


def render(overlay: str) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl not found (kubectl kustomize renders the manifests offline)")
    path = K8S / overlay if overlay == "monitoring" else K8S / "overlays" / overlay
    out = subprocess.run(["kubectl", "kustomize", str(path)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def quantity(text: str) -> float:
    for unit, factor in UNITS.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_overlay_renders_and_validates_strictly(overlay, tmp_path):
    docs = render(overlay)
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    exe = shutil.which("kubernetes-validate") or str(Path(sys.executable).parent /
                                                      "kubernetes-validate")
    out = subprocess.run([exe, "--strict", str(rendered)], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert {d["metadata"].get("namespace") for d in docs} == {f"musedrp-{overlay}"
                                                               if overlay == "dev" else "musedrp"}


def test_base_has_one_folder_per_service():
    folders = {p.parent.name for p in (K8S / "base").glob("*/kustomization.yaml")}
    assert folders == {*SERVICES, "worker"}


def test_prod_workers_are_guaranteed_sized_and_scaled_on_their_queue():
    docs = render("prod")
    deployments, scalers = by_kind(docs, "Deployment"), by_kind(docs, "ScaledObject")
    assert set(deployments) == {f"worker-{s}" for s in SERVICES} == set(scalers)
    for service in SERVICES:
        pod = deployments[f"worker-{service}"]["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        req, lim = c["resources"]["requests"], c["resources"]["limits"]
        assert req == lim, f"{service}: not Guaranteed"
        assert re.fullmatch(r"[1-9]\d*", str(lim["cpu"])), f"{service}: CPU not an integer"
        assert {"name": "MUSEDRP_SERVICE", "value": service} in c["env"]
        assert "MUSEDRP_CPUS" not in str(c)  # the worker reads its affinity
        assert c["securityContext"]["readOnlyRootFilesystem"] and not pod[
            "automountServiceAccountToken"]
        (trigger,) = scalers[f"worker-{service}"]["spec"]["triggers"]
        queue = trigger["metadata"]["queueName"]
        assert scalers[f"worker-{service}"]["spec"]["scaleTargetRef"]["name"] == \
            f"worker-{service}"
        if service in BY_NAME:
            spec = BY_NAME[service].spec
            assert queue == work_key(service)
            frames, ifus = FULL_NIGHT[service]
            need = spec.memory.estimate_gb(frames, ifus) * 1e9
            assert need <= quantity(lim["memory"]) <= max(1.5 * need, need + 2**31), service
            assert pod["terminationGracePeriodSeconds"] >= spec.timeout_s + TRANSFER_MARGIN_S
        else:
            assert queue == service


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_workers_scale_on_ready_and_unacknowledged_messages(overlay):
    """KEDA's RabbitMQ scaler counts unacknowledged (running) orders only through the
    management API (protocol http); over AMQP it sees ready ones alone and would scale a
    stage to zero under its last running recipe.  The URL comes from the Secret."""
    docs = render(overlay)
    auths = by_kind(docs, "TriggerAuthentication")
    scalers = by_kind(docs, "ScaledObject")
    assert scalers
    for name, scaler in scalers.items():
        (trigger,) = scaler["spec"]["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "rabbitmq" and meta["protocol"] == "http", name
        assert meta["mode"] == "QueueLength" and float(meta["value"]) >= 1, name
        assert str(meta.get("excludeUnacknowledged", "false")).lower() == "false", name
        assert not {"host", "hostFromEnv"} & meta.keys(), name  # no URL outside the Secret
        (ref,) = auths[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]
        assert ref == {"parameter": "host", "name": "musedrp-credentials",
                       "key": "rabbitmq-management-url"}, name
    if overlay == "dev":  # the URL points at the broker's management port
        (secret,) = by_kind(docs, "Secret").values()
        url = base64.b64decode(secret["data"]["rabbitmq-management-url"]).decode()
        assert re.fullmatch(r"http://[^:@/]+:[^@/]+@rabbitmq:15672/", url), url
        ports = by_kind(docs, "Service")["rabbitmq"]["spec"]["ports"]
        assert {"name": "management", "port": 15672, "targetPort": "management"} in ports


def test_credentials_only_in_secrets():
    for overlay in ("dev", "prod"):
        for cm in by_kind(render(overlay), "ConfigMap").values():
            assert not any(w in k for k in cm["data"] for w in ("SECRET", "PASSWORD")), cm


def test_monitoring_scrapes_every_service_pod_and_ships_rules_and_dashboard():
    docs = render("monitoring")
    (monitor,) = by_kind(docs, "PodMonitor").values()
    selector = monitor["spec"]["selector"]["matchLabels"]
    for d in by_kind(render("prod"), "Deployment").values():
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()
        assert any(p["name"] == "metrics" for p in
                   d["spec"]["template"]["spec"]["containers"][0]["ports"])
    assert {"targetLabel": "job", "replacement": "musedrp"} in \
        monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]
    maps = {name.rsplit("-", 1)[0]: cm for name, cm in by_kind(docs, "ConfigMap").items()}
    assert maps["musedrp-dashboard"]["metadata"]["labels"] == {"grafana_dashboard": "1"}
    assert json.loads(maps["musedrp-dashboard"]["data"]["musedrp-dashboard.json"])["panels"]
    assert "alert: MusedrpDeadLetters" in maps["musedrp-prometheus"]["data"]["musedrp.rules.yml"]
