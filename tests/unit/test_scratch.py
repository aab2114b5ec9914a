"""A service's scratch directory: its own at every start, and what dead processes left there
removed, also when the PID is the same at every start (PID 1 in a container)."""

import logging
import os

from musedrp.service import own_scratch
from musedrp.settings import Settings

LOG = logging.getLogger("test")


def test_scratch_of_a_dead_start_with_the_same_pid_is_removed(tmp_path):
    s = Settings.load({"MUSEDRP_SCRATCH": str(tmp_path)})
    left = tmp_path / f"bias.{os.getpid()}"  # what a killed start with this PID left
    (left / "0123456789abcdef-x").mkdir(parents=True)
    other = tmp_path / "flat.1"  # another service's
    other.mkdir()
    mine = own_scratch(s, "bias", LOG)
    assert not left.exists() and other.exists()
    assert mine.is_dir() and mine.name.startswith(f"bias.{os.getpid()}.")


def test_scratch_of_a_running_process_is_kept(tmp_path):
    s = Settings.load({"MUSEDRP_SCRATCH": str(tmp_path)})
    running = own_scratch(s, "bias", LOG)  # its lock stays held, as by a running service
    (running / "job").mkdir()
    second = own_scratch(s, "bias", LOG)
    assert second != running and (running / "job").is_dir()
