"""The ``podman build`` options that show an image build this machine's pip settings: every
pip configuration file that exists and every local file or directory a setting names
(constraints, find-links, file:// indexes with their parent, whose pages link to
``../../files``), each mounted read-only at its own path; the CA bundle at ``CERT`` instead,
named by the build argument PIP_CERT (Debian's ca-certificates, installed in the build, owns
the bundle's usual path).  For the build only, never copied into an image.  Standard library
only: it runs before any venv exists.
"""

import re
import subprocess
import sys
from pathlib import Path

CERT = "/run/pip-build/ca.crt"
PATH_SETTINGS = ("client-cert", "constraint", "find-links", "index-url",
                 "extra-index-url", "requirement")


def pip_debug() -> str:
    return subprocess.run([sys.executable, "-m", "pip", "config", "debug"], capture_output=True,
                          text=True, check=False).stdout


def settings(debug: str) -> list[tuple[str, str]]:
    """(name, value) of every setting in the configuration files and ``PIP_*`` variables."""
    return [(name.lower().removeprefix("pip_").replace("_", "-"), value) for name, value in
            re.findall(r"^\s+(?:\S+\.)?([A-Za-z_-]+)[:=]\s*'?([^'\n]+)'?$", debug, re.M)]


def options(debug: str) -> list[str]:
    found = [Path(p) for p in re.findall(r"^\s+(\S+), exists: True$", debug, re.M)]
    certs = []
    for name, value in settings(debug):
        local = [Path(v.removeprefix("file://")) for v in value.split()
                 if v.startswith(("/", "file://"))]
        if name == "cert":
            certs += local
        elif name in PATH_SETTINGS:
            found += [p.parent if name.endswith("index-url") else p for p in local]
    out = [f"-v {p}:{p}:ro" for p in sorted({p for p in found if p.exists()})]
    if certs and certs[0].is_file():  # the variable, listed first, wins
        out += [f"-v {certs[0]}:{CERT}:ro", f"--build-arg PIP_CERT={CERT}"]
    return out


def main() -> None:
    print(" ".join(options(pip_debug())))


if __name__ == "__main__":
    main()
