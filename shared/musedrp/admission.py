"""One machine's cores and memory, shared by the stage workers of a ``musedrp serve``.

The embedded executor's rule, applied across processes: a recipe starts when a core is free
and its memory estimate fits the budget beside the running ones, the waiting recipe with the
most jobs below it first (``WorkOrder.rank``; one that does not fit lets a lower one that
does go ahead); a merging recipe (``StageSpec.multicore``) takes every free core when it
starts and every core freed while it runs, before any new recipe gets one.  The workers
share a small JSON file of claims, running and waiting, each read and rewritten under an
exclusive ``flock``; the claim of a process that died (killed mid-recipe) is dropped by the
next reader, so its cores and memory are not lost.

Under Kubernetes nothing of this runs: each worker pod's CPUs and memory limit are its own
(requests = limits), granted by the scheduler, so a worker without a shared pool runs every
recipe on its whole CPU set, as before.
"""

import contextlib
import fcntl
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from musedrp.errors import DataError, Interrupted
from musedrp.esorex import CpuGrant

POLL_S = 0.5


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    return True


class SharedPool:
    """Cores ``cpus`` and ``memory_gb`` of memory, claimed by processes through ``path``."""

    def __init__(self, path: Path, cpus: Sequence[int], memory_gb: float,
                 poll_s: float = POLL_S) -> None:
        if not cpus:
            raise ValueError("no CPUs to share")
        self.path, self.cpus, self.memory_gb, self.poll_s = path, sorted(cpus), memory_gb, poll_s
        self._stop = threading.Event()

    def held(self) -> dict[str, dict]:
        """The claims of living processes: CPUs, memory, merging or not, by claim name."""
        return self._update(dict)

    def interrupt(self) -> None:
        """Stop waiting: a claim waiting for cores raises ``Interrupted`` (shutdown)."""
        self._stop.set()

    @contextlib.contextmanager
    def claim(self, memory_gb: float, multicore: bool = False,
              rank: int = 0) -> Iterator[Sequence[int]]:
        """Wait for a core (a merging job: every free core) and ``memory_gb``, behind the
        waiting claims of higher ``rank`` that fit; yield the CPUs, which for a merging job
        grow while it holds them.

        Raises
        ------
        DataError
            ``memory_gb`` alone exceeds the machine's budget: it would never start.
        Interrupted
            ``interrupt()`` was called while waiting.
        """
        if memory_gb > self.memory_gb:
            raise DataError(f"needs {memory_gb:.1f} GB, more than this machine's memory budget "
                            f"of {self.memory_gb:.1f} GB: not started")
        name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        claim = {"pid": os.getpid(), "cpus": [], "memory_gb": memory_gb,
                 "multicore": multicore, "rank": rank, "waiting": time.time()}
        try:
            while (cpus := self._update(lambda claims: self._take(claims, name, claim))) is None:
                if self._stop.wait(self.poll_s):
                    raise Interrupted("stopped while waiting for a core")
        except BaseException:
            self._update(lambda claims: claims.pop(name, None))
            raise
        granted = CpuGrant(cpus, len(self.cpus)) if multicore else cpus
        done = threading.Event()
        widen = threading.Thread(target=self._widen, args=(name, granted, done), daemon=True)
        if multicore:
            widen.start()
        try:
            yield granted
        finally:
            done.set()
            self._update(lambda claims: self._release(claims, name))

    def _take(self, claims: dict, name: str, claim: dict) -> list[int] | None:
        """The CPUs for claim ``name`` if it is the first waiting claim that fits, by rank
        and then arrival; else None, and it waits in ``claims``."""
        claims.setdefault(name, claim)
        free = self._free(claims)
        room = self.memory_gb - sum(c["memory_gb"] for c in claims.values()
                                    if "waiting" not in c)
        fitting = [k for k, c in claims.items() if "waiting" in c and c["memory_gb"] <= room]
        if not free or not fitting or min(fitting, key=lambda k: (
                -claims[k].get("rank", 0), claims[k]["waiting"])) != name:
            return None
        mine = claims[name]
        del mine["waiting"]
        mine["cpus"] = free if mine["multicore"] else free[:1]
        return mine["cpus"]

    def _release(self, claims: dict, name: str) -> None:
        """Drop the claim; its cores go to a running merging claim first."""
        freed = claims.pop(name, {}).get("cpus", [])
        if merging := [c for c in claims.values() if c["multicore"] and "waiting" not in c]:
            merging[0]["cpus"] = sorted({*merging[0]["cpus"], *freed})

    def _widen(self, name: str, granted: CpuGrant, done: threading.Event) -> None:
        """Every core free while this merging claim holds: it is the first to get it."""
        while not done.wait(self.poll_s):
            def grow(claims: dict) -> list[int]:
                if name in claims:
                    claims[name]["cpus"] = sorted({*claims[name]["cpus"], *self._free(claims)})
                    return claims[name]["cpus"]
                return []
            if cpus := self._update(grow):
                granted.grant(cpus)

    def _free(self, claims: dict) -> list[int]:
        held = {c for claim in claims.values() for c in claim["cpus"]}
        return [c for c in self.cpus if c not in held]

    def _update(self, change: Callable[[dict], object]) -> object:
        """``change`` applied to the claims of living processes, under the file's lock."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with os.fdopen(os.dup(fd), "r+") as f:
                text = f.read()
                try:
                    claims = json.loads(text) if text.strip() else {}
                except ValueError:  # torn by a crash mid-write: no claim can be trusted
                    claims = {}
                claims = {k: c for k, c in claims.items() if _alive(c["pid"])}
                result = change(claims)
                f.seek(0)
                f.truncate()
                f.write(json.dumps(claims))
            return result
        finally:
            os.close(fd)  # releases the lock
