"""The machine-wide admission of serve's workers: the embedded executor's rule across
processes (free core, memory budget, the waiting job with the most below it first, merging
jobs widened first, dead claims dropped)."""

import json
import subprocess
import threading
import time

import pytest

from musedrp.admission import SharedPool
from musedrp.errors import DataError, Interrupted
from musedrp.serve import instances


@pytest.fixture
def pool(tmp_path):
    return SharedPool(tmp_path / "admission.json", [0, 1], memory_gb=10.0, poll_s=0.02)


def claim_later(pool, memory_gb, multicore=False, rank=0):
    """Claim in a thread; returns (the thread, a dict filled with the CPUs once granted,
    an event that releases the claim)."""
    got, release = {}, threading.Event()

    def run():
        with pool.claim(memory_gb, multicore, rank) as cpus:
            got["cpus"] = list(cpus)
            release.wait(5)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, got, release


def wait_for(predicate, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_one_core_each_and_a_third_waits_for_a_freed_one(pool):
    with pool.claim(1.0) as a, pool.claim(1.0) as b:
        assert {*a, *b} == {0, 1} and len(a) == len(b) == 1
        t, got, release = claim_later(pool, 1.0)
        time.sleep(0.2)
        assert not got  # no free core
    wait_for(lambda: got)
    release.set()
    t.join()


def test_memory_budget_across_claims(pool):
    with pool.claim(7.0):
        t, got, release = claim_later(pool, 4.0)
        time.sleep(0.2)
        assert not got  # a core is free, 7 + 4 GB is not
    wait_for(lambda: got)
    release.set()
    t.join()
    with pytest.raises(DataError, match="more than this machine's memory budget"):
        with pool.claim(11.0):
            pass


def waiting(pool):
    return sorted(c["rank"] for c in pool.held().values() if "waiting" in c)


def test_a_freed_core_goes_to_the_waiting_job_with_the_most_below_it(pool):
    with pool.claim(1.0):
        with pool.claim(1.0):
            low, got_low, release_low = claim_later(pool, 1.0, rank=1)
            wait_for(lambda: waiting(pool) == [1])
            high, got_high, release_high = claim_later(pool, 1.0, rank=5)
            wait_for(lambda: waiting(pool) == [1, 5])
        wait_for(lambda: got_high)
        time.sleep(0.2)
        assert not got_low and waiting(pool) == [1]
        release_high.set()
        high.join()
        wait_for(lambda: got_low)
        release_low.set()
        low.join()
    assert pool.held() == {}


def test_a_waiting_job_that_does_not_fit_lets_a_smaller_one_go_first(pool):
    with pool.claim(7.0):  # one core and 3 GB free
        big, got_big, release_big = claim_later(pool, 4.0, rank=5)
        wait_for(lambda: waiting(pool) == [5])
        small, got_small, release_small = claim_later(pool, 2.0, rank=1)
        wait_for(lambda: got_small)
        assert not got_big
        release_small.set()
        small.join()
    wait_for(lambda: got_big)
    release_big.set()
    big.join()


def test_merging_claim_takes_every_free_core_and_those_freed_first(pool):
    with pool.claim(1.0) as single:
        t, got, release = claim_later(pool, 2.0, multicore=True)
        wait_for(lambda: got)
        assert got["cpus"] == [c for c in (0, 1) if c not in single]
        waiting, got_single, release_single = claim_later(pool, 1.0)
        time.sleep(0.2)
    # the freed core went to the merging claim, not to the waiting per-IFU claim
    claims = pool.held()
    assert [c["cpus"] for c in claims.values() if c["multicore"]] == [[0, 1]]
    time.sleep(0.2)
    assert not got_single
    release.set()
    t.join()
    wait_for(lambda: got_single)
    release_single.set()
    waiting.join()


def test_merging_claim_grows_while_held(pool):
    with pool.claim(1.0) as single:
        merging = pool.claim(2.0, multicore=True)
        cpus = merging.__enter__()
        assert len(cpus) == 1
    wait_for(lambda: len(cpus) == 2)  # the runner widens the recipe to what the grant holds
    assert sorted(cpus) == [0, 1] and single
    merging.__exit__(None, None, None)
    assert pool.held() == {}


def test_claim_of_a_dead_process_is_dropped(pool):
    gone = subprocess.Popen(["true"])  # noqa: S607
    gone.wait()
    pool.path.write_text(json.dumps({"x": {"pid": gone.pid, "cpus": [0, 1], "memory_gb": 9.0,
                                           "multicore": True}}))
    with pool.claim(5.0) as cpus:
        assert len(cpus) == 1


def test_torn_file_is_read_as_no_claims(pool):
    pool.path.write_text('{"x": {"pid": 1, "cp')
    with pool.claim(1.0) as cpus:
        assert len(cpus) == 1


def test_interrupt_ends_the_wait(pool):
    with pool.claim(9.0):
        failed = {}

        def run():
            try:
                with pool.claim(5.0):
                    pass
            except Interrupted as err:
                failed["err"] = err
        t = threading.Thread(target=run)
        t.start()
        time.sleep(0.1)
        pool.interrupt()
        t.join(5)
    assert "stopped while waiting" in str(failed["err"])
    assert pool.held() == {}  # the wait left no claim behind


def test_serve_starts_a_worker_per_core_and_a_spare_for_per_ifu_stages():
    names = dict(instances(["ingest", "planner", "bias", "scipost", "standard"], 2))
    assert names == {"ingest": "ingest", "planner": "planner", "bias": "bias",
                     "bias.2": "bias", "bias.3": "bias", "scipost": "scipost",
                     "standard": "standard"}
