"""The report of a services deployment: the hand-made reduction of test_qcreport put into a
registry and a bucket (a local store), materialised back, and rendered to the same page.
(A real deployment's report: tests/integration/test_services.py.)"""

import json
import re
from pathlib import Path

from musedrp import qcreport
from musedrp.deployment import PRODUCTS_READ, materialise
from musedrp.frames import Frame
from musedrp.messages import WorkOrder
from musedrp.registry import Registry
from musedrp.storage import LocalStore

from ..conftest import job_key
from .test_qcreport import out  # noqa: F401 - the fixture


def deploy(out: Path, tmp_path: Path) -> tuple[Registry, LocalStore]:  # noqa: F811
    """What the services would hold after the reduction in ``out``."""
    plan = json.loads((out / "plan.json").read_text())
    tmp_path.mkdir()
    registry = Registry(f"sqlite:///{tmp_path / 'registry.sqlite'}")
    orders = [WorkOrder.model_validate(o) for o in plan["orders"]]
    registry.record_orders(orders)
    registry.set_state(job_key("b1"), "succeeded")
    registry.set_state(job_key("f1"), "failed", "muse_flat exited with 1")
    registry.set_state(job_key("w1"), "blocked", f"upstream job {job_key('f1')} did not succeed")
    registry.record_decisions(None, plan["decisions"])
    frames = [Frame(path=f"raw/{f['name']}", name=f["name"], size=1, tag=f["tag"], mjd=i)
              for i, f in enumerate(plan["frames"])]
    registry.record_frames(frames, {f"raw/{f['name']}": (f["status"], "; ".join(f["why"]))
                                    for f in plan["frames"]})
    store = LocalStore(tmp_path / "bucket")
    for path in (out / "products").rglob("*"):
        if path.is_file():
            store.put_file(path, str(path.relative_to(out)))
    store.put_file(out / "plan.json", "products/2014-08-01/bias/WFM/"
                   f"{job_key('b1')}/MASTER_BIAS-01.fits")  # a product the page never opens
    return registry, store


def test_the_deployment_gives_the_page_of_the_reduction(out: Path, tmp_path: Path):  # noqa: F811
    registry, store = deploy(out, tmp_path / "deployment")
    cache = tmp_path / "cache" / out.name  # the page's title names the directory
    materialise(registry, store, cache, "/raw")
    # the same page, but for where the failed job's esorex log lies
    assert qcreport.render(cache).replace(str(cache), str(out)) == qcreport.render(out)
    bias = next(cache.glob("products/*/bias/*/*"))
    assert sorted(p.name for p in bias.iterdir()) == ["manifest.json"]  # no product fetched


def test_a_job_materialised_once_is_not_fetched_again(out: Path, tmp_path: Path):  # noqa: F811
    registry, store = deploy(out, tmp_path / "deployment")
    materialise(registry, store, tmp_path / "cache", "/raw")
    fetched = []
    get = store.get_file
    store.get_file = lambda key, dest: (fetched.append(key), get(key, dest))
    materialise(registry, store, tmp_path / "cache", "/raw")
    assert all("/flat/" in k for k in fetched)  # only the failed job's files, which may change


def test_a_failure_without_files_shows_the_registry_reason(out: Path, tmp_path: Path):  # noqa: F811
    registry, store = deploy(out, tmp_path / "deployment")
    for key in store.keys("products/2014-08-01/flat/"):
        store.delete(key)  # an order dead-lettered before its worker wrote anything
    page = qcreport.render(materialise(registry, store, tmp_path / "cache", "/raw"))
    assert "flat IFU 01: failed" in page and "muse_flat exited with 1" in page


def test_the_products_fetched_are_those_the_report_opens():
    source = Path(qcreport.__file__).read_text()
    assert set(re.findall(r'\.product\("(\w+)"\)', source)) == set(PRODUCTS_READ)
