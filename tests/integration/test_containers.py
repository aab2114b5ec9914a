"""The services as containers: the images of this commit (``make images``, podman on these
machines), run as Kubernetes would run them, against the host's RabbitMQ (a vhost of its
own), a SeaweedFS S3 server and PostgreSQL (a database of its own).

One worker container per stage (bias, flat, wavecal, lsf): read-only root, uid 10001, pinned
with ``--cpuset-cpus`` (the worker reads its CPU set from its affinity), memory limited to the
size the manifests declare, credentials from files where the manifests mount them.  Ingest and
the planner run on the host.  The tests run in order and build on each other: the night's
calibrations of IFU 1 reduced through the containers (one killed mid-recipe), compared with
``musedrp reduce``; then the rendered dev manifests run as a pod answering a work order; then
``musedrp health`` catching a stuck consume loop inside a container.
"""

import base64
import copy
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

import musedrp
from musedrp import s3server
from musedrp.frames import classify_dir
from musedrp.messages import Envelope, WorkOrder
from musedrp.registry import Registry
from musedrp.serve import Fleet, submit
from musedrp.settings import SECRETS as SECRET_SETTINGS
from musedrp.settings import Settings
from musedrp.storage import S3Store
from musedrp.tags import Tag

from .conftest import IFU, assert_same_data, manifest, products, throwaway_vhost
from .test_services import Events, jobs_of, start_consuming, tail_logs, wait_for_states

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]
TAG = "test"  # kept after the tests: the next build reuses every unchanged layer
STAGES = {"bias": 0, "flat": 1, "wavecal": 0, "lsf": 1}  # each stage's CPU
SECRETS = "/var/run/secrets/musedrp"  # where the manifests mount the credentials


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout,
                          check=False, env={**os.environ, "CONTAINERS_CONF": str(
                              ROOT / "docker" / "containers.conf")})
    assert not check or proc.returncode == 0, f"podman {args[0]}: {proc.stderr[-3000:]}"
    return proc


def free_port() -> int:
    return s3server.free_port_base(1, 19100, 19900)


@pytest.fixture(scope="module")
def images() -> None:
    """The images of this commit: built, or taken from podman's layer cache."""
    if shutil.which("podman") is None:
        pytest.fail("podman not found: run `make setup` (the container tests run podman)")
    proc = subprocess.run(["make", "-C", str(ROOT), "images", f"TAG={TAG}",
                           f"SERVICES=planner {' '.join(STAGES)}"],
                          capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def test_the_image_holds_exactly_the_locked_packages(images):
    listing = ("import importlib.metadata as m; "
               "print(*sorted(f'{d.name}=={d.version}' for d in m.distributions()))")
    out = podman("run", "--rm", "--entrypoint", "python3", f"musedrp-base:{TAG}", "-c",
                 listing).stdout
    lock = (ROOT / "docker" / "requirements.lock").read_text()
    locked = {line.split(" ")[0] for line in lock.splitlines() if "==" in line}
    norm = {pin.lower().replace("_", "-") for pin in out.split()}
    assert norm == {pin.lower() for pin in locked} | {f"musedrp=={musedrp.__version__}"}


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    """The dev overlay as Kubernetes would receive it."""
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "k8s" / "overlays" / "dev")],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return list(yaml.safe_load_all(out))


def declared_memory(rendered: list[dict], stage: str) -> str:
    """The memory limit of the stage's Deployment, in podman's units (3Gi -> 3g)."""
    (dep,) = [d for d in rendered if d["kind"] == "Deployment"
              and d["metadata"]["name"] == f"worker-{stage}"]
    limit = dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    assert limit.endswith("Gi"), limit
    return limit.removesuffix("Gi") + "g"


class Containers:
    """Worker containers of this module, started and killed by stage."""

    def __init__(self, workspace: Path, env: dict[str, str], secrets: Path) -> None:
        self.workspace, self.env, self.secrets = workspace, env, secrets
        self.names: dict[str, str] = {}

    def start(self, image: str, memory: str, cpu: int, **settings: str) -> str:
        """Start one, as the manifests run it, and wait until it consumes its queue."""
        name = f"musedrp-it-{image}-{uuid.uuid4().hex[:8]}"
        scratch = self.workspace / "scratch" / image
        scratch.mkdir(parents=True, exist_ok=True)
        scratch.chmod(0o777)  # uid 10001 writes there
        env = {**self.env, "MUSEDRP_METRICS_PORT": str(free_port()),
               **{f"MUSEDRP_{k.upper()}": v for k, v in settings.items()}}
        podman("run", "--detach", "--name", name, "--read-only", "--read-only-tmpfs=false",
               "--user", "10001", "--cpuset-cpus", str(cpu), "--memory", memory,
               "--network", "host", "--volume", f"{scratch}:/scratch",
               "--volume", f"{self.secrets}:{SECRETS}:ro",
               *(f"--env={k}={v}" for k, v in env.items()), f"musedrp-{image}:{TAG}")
        self.names[image] = name
        queue = "planner" if image == "planner" else f"work.{image}"
        deadline = time.monotonic() + 120
        while f"consuming {queue}" not in self.logs(image):
            state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            assert state == "running" and time.monotonic() < deadline, self.logs(image)
            time.sleep(0.5)
        return name

    def logs(self, image: str) -> str:
        proc = podman("logs", self.names[image], check=False)
        return (proc.stdout + proc.stderr)[-6000:]

    def processes(self, image: str) -> str:
        return podman("top", self.names[image], "args", check=False).stdout

    def kill(self, image: str) -> None:
        podman("kill", self.names[image])
        podman("rm", "--force", self.names.pop(image))

    def remove_all(self) -> None:
        for image in list(self.names):
            podman("rm", "--force", "--time", "5", self.names.pop(image), check=False)


@pytest.fixture(scope="module")
def infra(workspace: Path, images) -> Iterator[dict]:
    """An S3 server, a vhost and a database; ingest and planner on the host; the credentials
    as files, for the containers."""
    workspace = Path(tempfile.mkdtemp(prefix="containers-", dir=workspace))
    s3 = s3server.start(workspace / "s3")
    secrets = workspace / "secrets"
    secrets.mkdir()
    (secrets / "s3-secret-key").write_text(s3.secret_key)
    (secrets / "amqp-password").write_text("guest")
    for f in secrets.iterdir():
        f.chmod(0o644)
    with throwaway_vhost(database=True) as names:
        env = {**names, "MUSEDRP_S3_ENDPOINT": s3.endpoint,
               "MUSEDRP_S3_ACCESS_KEY": s3.access_key, "MUSEDRP_S3_SECRET_KEY": s3.secret_key,
               "MUSEDRP_SCRATCH": str(workspace / "scratch" / "host"),
               "MUSEDRP_PLAN_QUIET_S": "5", "MUSEDRP_PLAN_MAX_WAIT_S": "600",
               "MUSEDRP_PLAN_EVERY_S": "600",
               "MUSEDRP_IFUS": str(IFU)}
        settings = Settings.load(env)
        store = S3Store.from_settings(settings)
        store.create_bucket()
        worker_env = {"MUSEDRP_AMQP_VHOST": names["MUSEDRP_AMQP_VHOST"],
                      "MUSEDRP_AMQP_PASSWORD_FILE": f"{SECRETS}/amqp-password",
                      "MUSEDRP_S3_ENDPOINT": s3.endpoint, "MUSEDRP_S3_ACCESS_KEY": s3.access_key,
                      "MUSEDRP_S3_SECRET_KEY_FILE": f"{SECRETS}/s3-secret-key"}
        state = {"env": env, "settings": settings, "store": store, "s3": s3,
                 "fleet": Fleet(workspace / "services", env), "workspace": workspace,
                 "containers": Containers(workspace, worker_env, secrets), "secrets": secrets}
        yield state
        state["containers"].remove_all()
        state["fleet"].stop_all()
        s3.stop()
        shutil.rmtree(workspace, ignore_errors=True)


def test_a_night_reduced_by_worker_containers_as_by_musedrp_reduce(infra, night, reduced,
                                                                   rendered):
    fleet, containers, store = infra["fleet"], infra["containers"], infra["store"]
    for stage, cpu in STAGES.items():
        containers.start(stage, declared_memory(rendered, stage), cpu)
    start_consuming(fleet, "ingest")
    events = Events(infra["settings"])
    raw, _ = night
    _, out, _ = reduced
    # the frames `musedrp reduce` gave these stages' IFU 1 jobs, and the exposures that make
    # the night a science night: the planner must choose the same among them (fewer uploads)
    used = {i["name"] for stage in STAGES for i in manifest(out, stage)["inputs"]
            if not i["job_key"]}
    subset = infra["workspace"] / "submit"
    subset.mkdir()
    for f in classify_dir(raw)[0]:
        if f.name in used or f.tag == Tag.OBJECT:
            (subset / f.name).symlink_to(f.path)
    n = submit(subset, infra["settings"], report=lambda _: None)
    # the planner starts once every frame is registered: it plans the night once, as
    # `musedrp reduce` does (a plan during a slow upload would plan a part of the night too)
    events.wait(lambda seen: len({e.payload.key for e in seen if e.type == "frame.registered"})
                >= n, 300, "every frame registered", fleet)
    start_consuming(fleet, "planner")

    # the bias container is killed (SIGKILL) in the middle of its recipe; a new one takes over
    deadline = time.monotonic() + 300
    while "muse_bias" not in containers.processes("bias"):
        assert time.monotonic() < deadline, tail_logs(fleet) + containers.logs("bias")
        time.sleep(0.5)
    time.sleep(3)
    containers.kill("bias")
    containers.start("bias", declared_memory(rendered, "bias"), STAGES["bias"])

    def all_succeeded(seen):
        return set(STAGES) <= {e.payload.stage for e in seen if e.type == "job.finished"
                               and e.payload.outcome == "succeeded"}

    try:
        events.wait(all_succeeded, 1200, "every stage's job.finished", fleet)
    except AssertionError as err:
        raise AssertionError(f"{err}\n" + "\n".join(containers.logs(s) for s in STAGES)) from None
    jobs = wait_for_states(infra, dict.fromkeys(STAGES, "succeeded"), every_job=False)
    assert "running muse_bias" in containers.logs("bias")  # the restarted one ran the recipe

    # the same job keys as `musedrp reduce`, products with the same data, each stage's recipe
    # on the CPU its container was given
    for stage, cpu in STAGES.items():
        (local,) = [p.parent for p in products(out, stage, "manifest.json")
                    if p.parent.name == jobs[stage].key]
        order = WorkOrder.model_validate(jobs[stage].order)
        keys = {k.rsplit("/", 1)[1]: k for k in store.keys(f"{order.product_dir}/")}
        names = sorted(p.name for p in local.glob("*.fits"))
        assert names and sorted(k for k in keys if k.endswith(".fits")) == names, keys
        for name in names:
            got = infra["workspace"] / "from-s3" / stage / name
            store.get_file(keys[name], got)
            assert_same_data(got, local / name)
        stored = store.get_json(keys["manifest.json"])
        assert stored["job_key"] == jobs[stage].key and stored["run"]["cpus"] == [cpu]
    finished = [e.payload for e in events.seen if e.type == "job.finished"]
    assert sorted(f.stage for f in finished if f.outcome == "succeeded") == sorted(STAGES)


def for_podman(rendered: list[dict], stage: str, infra: dict) -> list[dict]:
    """The stage's Deployment and the ConfigMap it reads, as rendered, with what podman 4.3's
    ``kube play`` cannot run rewritten (DESIGN.md, "Containers do run here"):

    - replicas 0 (KEDA's start) -> 1;
    - the Secret volume (podman panics on it) -> a hostPath directory holding the same items;
    - ``env.valueFrom.secretKeyRef`` (podman looks for a podman secret) -> the Secret's value;
    - ``hostNetwork`` added (the servers are the host's, on 127.0.0.1), hence no ``ports``;
    - the image tag: this commit's (``:test``);
    - the ConfigMap's addresses: this machine's servers, as an overlay would set them.

    Everything else is kept: variable names, file names and mount paths, securityContext,
    resources, probes, args.  KEDA's ScaledObject, the PodDisruptionBudget and the
    NetworkPolicy are not run: podman has no controller for them.
    """
    rendered = copy.deepcopy(rendered)
    (config,) = [d for d in rendered if d["kind"] == "ConfigMap"]
    (secret,) = [d for d in rendered if d["kind"] == "Secret"]
    (dep,) = [d for d in rendered if d["kind"] == "Deployment"
              and d["metadata"]["name"] == f"worker-{stage}"]
    s3, settings = infra["s3"], infra["settings"]
    config["data"].update({
        "MUSEDRP_AMQP_HOST": "127.0.0.1", "MUSEDRP_AMQP_USER": "guest",
        "MUSEDRP_AMQP_VHOST": settings.amqp_vhost, "MUSEDRP_S3_ENDPOINT": s3.endpoint,
        "MUSEDRP_S3_ACCESS_KEY": s3.access_key, "MUSEDRP_METRICS_PORT": str(free_port())})
    spec = dep["spec"]["template"]["spec"]
    dep["spec"]["replicas"] = 1
    spec["hostNetwork"] = True
    (container,) = spec["containers"]
    del container["ports"]
    container["image"] = container["image"].replace(":dev", f":{TAG}")
    for env in container["env"]:
        if ref := env.pop("valueFrom", {}).get("secretKeyRef"):
            assert ref["name"] == secret["metadata"]["name"], ref
            env["value"] = base64.b64decode(secret["data"][ref["key"]]).decode()
    (volume,) = [v for v in spec["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    items = {i["path"] for i in volume["secret"]["items"]}
    assert items == {f.name for f in infra["secrets"].iterdir()}, items
    del volume["secret"]
    volume["hostPath"] = {"path": str(infra["secrets"]), "type": "Directory"}
    return [config, dep]


def test_the_rendered_manifests_run_as_a_pod_that_answers_a_work_order(infra, rendered):
    containers, fleet = infra["containers"], infra["fleet"]
    containers.kill("bias")  # the pod's worker is the queue's only consumer
    config, dep = for_podman(rendered, "bias", infra)
    # every variable the manifests set is one the code reads, every file one they mount
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    for name, value in [*config["data"].items(),
                        *((e["name"], e["value"]) for e in container["env"])]:
        field = name.removeprefix("MUSEDRP_").lower()
        if name.endswith("_FILE"):
            assert field.removesuffix("_file") in SECRET_SETTINGS, name
            assert value.rsplit("/", 1)[0] in mounts, (name, value)
        else:
            assert field in Settings.model_fields or name in ("MUSEDRP_SERVICE", "PGPASSWORD")
    manifest = infra["workspace"] / "pod.yaml"
    manifest.write_text(yaml.safe_dump_all([config, dep]))
    podman("kube", "play", str(manifest))
    pod = f"{dep['metadata']['name']}-pod-0-{container['name']}"  # replica 0's container
    try:
        deadline = time.monotonic() + 120
        while "consuming work.bias" not in (logs := podman("logs", pod, check=False).stderr):
            assert time.monotonic() < deadline, logs[-3000:]
            time.sleep(0.5)
        (state,) = json.loads(podman("inspect", pod).stdout)
        memory = int(declared_memory(rendered, "bias").removesuffix("g")) * 2**30
        assert (state["Config"]["User"], state["HostConfig"]["ReadonlyRootfs"],
                state["HostConfig"]["Memory"]) == ("10001:10001", True, memory)
        # the liveness probe became the container's health check, and it passes
        assert "musedrp health" in " ".join(state["Config"]["Healthcheck"]["Test"])
        assert podman("healthcheck", "run", pod, check=False).returncode == 0

        (job,) = [j for j in jobs_of(infra) if j.stage == "bias"]
        events = Events(infra["settings"])
        events.publish(Envelope(type="work.bias", source="test",
                                payload=WorkOrder.model_validate(job.order)))
        events.wait(lambda _: events.finished(job.key, "cached"), 120,
                    "the pod's answer", fleet)
        assert job.key in podman("logs", pod).stderr
    finally:
        podman("kube", "down", str(manifest), check=False)


def test_health_catches_a_consume_loop_stuck_beside_live_metrics(infra, rendered):
    """The planner's consume loop waits on a registry table another session has locked: its
    metrics thread still answers, ``musedrp health`` (the image's HEALTHCHECK, the probes)
    fails until the lock is gone."""
    with throwaway_vhost(database=True) as names:
        url = names["MUSEDRP_DB_URL"]
        Registry(url).close()  # its tables, so that the lock can be taken before the planner
        containers = Containers(infra["workspace"] / "stuck", {
            **infra["containers"].env, **names}, infra["secrets"])
        port = free_port()
        with psycopg.connect(url.replace("+psycopg", "")) as lock:
            lock.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
            try:
                name = containers.start("planner", declared_memory(rendered, "planner"), 0,
                                        metrics_port=str(port), liveness_s="5")
                time.sleep(7)
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as r:
                    assert r.status == 200  # what the probes asked before
                health = podman("exec", name, "musedrp", "health", check=False)
                assert health.returncode == 1 and "stuck" in health.stderr, health.stderr
                assert podman("healthcheck", "run", name, check=False).returncode != 0
                lock.rollback()
                deadline = time.monotonic() + 30
                while podman("exec", name, "musedrp", "health", check=False).returncode:
                    assert time.monotonic() < deadline, containers.logs("planner")
                    time.sleep(1)
            finally:
                containers.remove_all()
