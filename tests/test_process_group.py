"""spinegrade.cli.process_group: group membership and liveness, seen through psutil."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from spinegrade.cli.process_group import group_alive, group_members, start_server, stop_group

# a parent that starts a child in its own group and waits: two processes, one group
PARENT = (
    "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import time; time.sleep(60)'])"
)


def _wait_members(pgid: int, n: int, timeout: float = 20.0) -> list:
    deadline = time.monotonic() + timeout
    while len(members := group_members(pgid)) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    return members


def test_members_of_a_group_and_its_end():
    proc = start_server([sys.executable, "-c", PARENT])
    try:
        members = _wait_members(proc.pid, 2)
        assert {p.pid for p in members} >= {proc.pid} and len(members) == 2
        assert all(os.getpgid(p.pid) == proc.pid for p in members)
        assert group_alive(proc.pid)
        assert os.getpid() not in {p.pid for p in members}  # we are not in its group
    finally:
        stop_group(proc, timeout=5.0)
    assert not group_alive(proc.pid) and group_members(proc.pid) == []


def test_a_group_of_zombies_is_not_alive():
    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    deadline = time.monotonic() + 20
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)  # it exits; unreaped, it stays a zombie in its group
    try:
        assert not group_alive(proc.pid)
        os.killpg(proc.pid, 0)  # the group still exists: only its zombie is in it
    finally:
        proc.wait()
    assert not group_alive(proc.pid)


def test_an_unknown_group_is_not_alive():
    proc = subprocess.Popen(["true"])
    proc.wait()  # its pid (and group id) is free now
    assert not group_alive(proc.pid)
