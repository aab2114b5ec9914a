#!/usr/bin/env python3
"""A stand-in for esorex in runner tests; ``FAKE_ESOREX_MODE`` picks its behaviour.

It records what it was started with (CPU affinity, environment) into ``probe.json``.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from astropy.io import fits

opts = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--")}
out, logdir = Path(opts["--output-dir"]), Path(opts["--log-dir"])
mode = os.environ.get("FAKE_ESOREX_MODE", "ok")
status = Path("/proc/self/status").read_text()
allowed = next(line.split(":")[1].strip() for line in status.splitlines()
               if line.startswith("Cpus_allowed_list"))
(logdir / "probe.json").write_text(json.dumps({
    "cpus_allowed_list": allowed, "affinity": sorted(os.sched_getaffinity(0)),
    "env": dict(os.environ),
    "argv": sys.argv[1:], "pgid": os.getpgid(0), "pid": os.getpid(),
}))
log = logdir / opts.get("--log-file", "esorex.log")
log.write_text("12:00:00 [ INFO  ] : [tid=000] This is EsoRex, version 9.9.9\n"
               "12:00:00 [ INFO  ] : [tid=000] using the libraries: CPL = 7.2.3, CFITSIO = 4\n"
               "12:00:00 [ INFO  ] muse_processing_recipeinfo: [tid=000] MUSE Instrument "
               "Pipeline v2.8.7\n"
               "12:00:01 [WARNING] muse_fake: [tid=000] a warning\n")
# the SOF as esorex reads it (--check-sof-exist=TRUE): "<file> <tag>" split on blanks, each
# file opened from the working directory
for line in Path(sys.argv[-1]).read_text().splitlines():
    if len(fields := line.split()) != 2 or not Path(fields[0]).is_file():
        with log.open("a") as f:
            f.write(f"12:00:01 [ ERROR ] esorex: [tid=000] unreadable SOF line {line!r}\n")
        sys.exit(1)
if mode == "hang":
    child = subprocess.Popen(["sleep", "1000"])  # noqa: S603, S607
    (logdir / "child.pid").write_text(str(child.pid))
    while True:
        time.sleep(1)
if mode == "widen":  # wait for a second CPU, in a thread started before it was granted
    seen = {}

    def watch() -> None:
        deadline = time.monotonic() + 10
        while len(os.sched_getaffinity(0)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        seen["thread"] = sorted(os.sched_getaffinity(0))

    thread = threading.Thread(target=watch)
    thread.start()
    thread.join()
    seen["main"] = sorted(os.sched_getaffinity(0))
    (logdir / "widened.json").write_text(json.dumps(seen))
    mode = "ok"
if mode == "sigkill":  # as the kernel's out-of-memory killer would
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "fail":
    with log.open("a") as f:
        f.write("12:00:02 [ ERROR ] muse_fake: [tid=000] something broke\n")
    sys.exit(1)
if mode == "ok":
    h = fits.Header()
    h["HIERARCH ESO PRO CATG"] = "MASTER_BIAS"
    h["HIERARCH ESO QC BIAS MASTER1 RON"] = 2.5
    fits.PrimaryHDU(header=h).writeto(out / "MASTER_BIAS-01.fits")
if mode == "wrongcatg":
    h = fits.Header()
    h["HIERARCH ESO PRO CATG"] = "MASTER_FLAT"
    fits.PrimaryHDU(header=h).writeto(out / "MASTER_BIAS-01.fits")
sys.exit(0)
