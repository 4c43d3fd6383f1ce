"""Crash safety of the atomic writers: real child processes killed with SIGKILL mid-write."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spinegrade.core import io

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

# The child writes through the real writers and touches the marker once it is mid-write,
# then keeps writing (or hangs) until it is killed. argv: mode, target, marker, ...
CHILD = r"""
import errno, os, sys, time
from pathlib import Path
from spinegrade.core import io

mode, target, marker = sys.argv[1:4]
chunk = b"n" * 65536

def write_slowly(fh, n_chunks, ready_at=None):
    for i in range(n_chunks):
        fh.write(chunk)
        fh.flush()
        if i == ready_at:
            Path(marker).touch()
            while True:  # mid-file for good: keep writing until killed
                fh.write(chunk)
                fh.flush()
                time.sleep(0.01)

if mode == "file":
    with io.atomic_path(target) as tmp, tmp.open("wb") as fh:
        write_slowly(fh, 64, ready_at=8)
elif mode == "dir":
    with io.atomic_dir(target) as tmp:
        (tmp / "sub").mkdir()
        for k in range(4):  # two complete 1 MiB files, then killed inside the third
            with (tmp / "sub" / f"new{k}.bin").open("wb") as fh:
                write_slowly(fh, 16, ready_at=8 if k == 2 else None)
elif mode == "commit":  # hang before the Nth step of the swap; argv: swap, N
    swap, hang_at = sys.argv[4], int(sys.argv[5])
    steps = []

    def hang_before(fn):
        def step(*args):
            steps.append(fn.__name__)
            if len(steps) == hang_at:
                Path(marker).touch()
                time.sleep(60)
            return fn(*args)

        return step

    def no_exchange(a, b):
        raise OSError(errno.EINVAL, "forced fallback")

    io._exchange = hang_before(io._exchange if swap == "exchange" else no_exchange)
    os.rename = hang_before(os.rename)
    os.replace = hang_before(os.replace)
    io.shutil.rmtree = hang_before(io.shutil.rmtree)
    with io.atomic_dir(target) as tmp:
        for k in range(3):
            (tmp / f"new{k}.bin").write_bytes(bytes([k]) * 100_000)
"""

STALE = re.compile(r"\.out\.[a-z0-9_]+\.(tmp|partial|old)")


def _kill_mid_write(tmp_path: Path, mode: str, target: Path, *args: str) -> None:
    """Run the child in ``mode`` on ``target`` and SIGKILL it once it is mid-write."""
    marker = tmp_path / f"ready-{mode}"
    marker.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, mode, str(target), str(marker), *args])
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert proc.poll() is None, f"child exited ({proc.returncode}) before the marker"
            assert time.monotonic() < deadline, "child never became ready"
            time.sleep(0.005)
        time.sleep(0.05)  # let it keep writing for a moment
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _snapshot(path: Path) -> bytes | dict[str, bytes]:
    """The bytes of a file, or {relative path: bytes} of every file under a directory."""
    if path.is_file():
        return path.read_bytes()
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def _make_old_dir(path: Path) -> None:
    (path / "sub").mkdir(parents=True)
    for k in range(3):
        (path / "sub" / f"old{k}.bin").write_bytes(bytes([k + 1]) * 200_000)
    (path / "old.json").write_text('{"old": true}\n')


def _stale(parent: Path) -> list[str]:
    return sorted(n for n in os.listdir(parent) if n != "out")


@posix_only
@pytest.mark.parametrize("old", [True, False], ids=["with-old", "no-old"])
def test_kill_mid_atomic_path_keeps_old_then_next_write_cleans(tmp_path: Path, old: bool) -> None:
    target = tmp_path / "d" / "out"
    target.parent.mkdir()
    if old:
        target.write_bytes(b"old output\n" * 1000)
    before = target.read_bytes() if old else None

    _kill_mid_write(tmp_path, "file", target)

    if old:
        assert target.read_bytes() == before
    else:
        assert not os.path.lexists(target)
    leftover = _stale(target.parent)
    assert len(leftover) == 1 and leftover[0].endswith(".tmp")
    assert (target.parent / leftover[0]).stat().st_size > 0  # it really was mid-write

    with io.atomic_path(target) as tmp:
        tmp.write_bytes(b"new output\n")
    assert target.read_bytes() == b"new output\n"
    assert os.listdir(target.parent) == ["out"]


@posix_only
@pytest.mark.parametrize("old", [True, False], ids=["with-old", "no-old"])
def test_kill_mid_atomic_dir_keeps_old_then_next_write_cleans(tmp_path: Path, old: bool) -> None:
    target = tmp_path / "d" / "out"
    target.parent.mkdir()
    if old:
        _make_old_dir(target)
    before = _snapshot(target) if old else None

    _kill_mid_write(tmp_path, "dir", target)

    if old:
        assert _snapshot(target) == before
    else:
        assert not os.path.lexists(target)
    leftover = _stale(target.parent)
    assert len(leftover) == 1 and leftover[0].endswith(".partial")
    partial = _snapshot(target.parent / leftover[0])
    assert len(partial) == 3 and len(partial["sub/new2.bin"]) < 16 * 65536  # killed mid-file

    with io.atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new\n")
    assert _snapshot(target) == {"new.txt": b"new\n"}
    assert os.listdir(target.parent) == ["out"]


NEW = {f"new{k}.bin": bytes([k]) * 100_000 for k in range(3)}

# What `out` holds when the writer is killed just before step N of the swap. Steps: exchange
# (or its refusal), then fallback renames out -> backup, tmp -> out, backup -> tmp; then rmtree.
COMMIT_STATES = {
    "exchange": {1: "old", 2: "new"},
    "fallback": {1: "old", 2: "old", 3: "missing", 4: "new", 5: "new"},
}


@posix_only
@pytest.mark.parametrize(
    ("swap", "hang_at"), [(s, n) for s, states in COMMIT_STATES.items() for n in states]
)
def test_kill_at_each_swap_step_never_leaves_partial(
    tmp_path: Path, swap: str, hang_at: int
) -> None:
    target = tmp_path / "d" / "out"
    _make_old_dir(target)
    old = _snapshot(target)

    _kill_mid_write(tmp_path, "commit", target, swap, str(hang_at))

    state = COMMIT_STATES[swap][hang_at]
    leftover = {n: _snapshot(target.parent / n) for n in _stale(target.parent)}
    assert all(STALE.fullmatch(n) for n in leftover)
    if state == "missing":  # documented fallback window: old output complete at the backup
        assert not os.path.lexists(target)
        assert [v for n, v in leftover.items() if n.endswith(".old")] == [old]
        assert [v for n, v in leftover.items() if n.endswith(".partial")] == [NEW]
    else:
        assert _snapshot(target) == (old if state == "old" else NEW)
        assert list(leftover.values()) == [NEW if state == "old" else old]

    with io.atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new\n")
    assert _snapshot(target) == {"new.txt": b"new\n"}
    assert os.listdir(target.parent) == ["out"]


def test_exception_in_block_leaves_old_untouched_and_no_temp(tmp_path: Path) -> None:
    file_target, dir_target = tmp_path / "f" / "out", tmp_path / "d" / "out"
    file_target.parent.mkdir()
    file_target.write_bytes(b"old\n")
    _make_old_dir(dir_target)
    before = _snapshot(dir_target)

    with pytest.raises(RuntimeError, match="boom"), io.atomic_path(file_target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"), io.atomic_dir(dir_target) as tmp:
        (tmp / "old.json").write_text("partial")
        raise RuntimeError("boom")

    assert file_target.read_bytes() == b"old\n"
    assert _snapshot(dir_target) == before
    assert os.listdir(file_target.parent) == ["out"]
    assert os.listdir(dir_target.parent) == ["out"]


@pytest.mark.parametrize("old", ["dir", "file", "none"])
@pytest.mark.parametrize("swap", ["exchange", "fallback"])
def test_atomic_dir_replaces_whole_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: str, old: str
) -> None:
    target = tmp_path / "d" / "out"
    target.parent.mkdir()
    if old == "dir":
        _make_old_dir(target)
    elif old == "file":
        target.write_bytes(b"old file\n")
    calls: list[str] = []
    real_exchange = io._exchange

    def exchange(a: Path, b: Path) -> None:
        if swap == "fallback":
            calls.append("refused")
            raise OSError(errno.EINVAL, "forced fallback")
        real_exchange(a, b)
        calls.append("exchanged")

    monkeypatch.setattr(io, "_exchange", exchange)

    with io.atomic_dir(target) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "new.bin").write_bytes(b"\x00\x01" * 1000)
        (tmp / "new.txt").write_text("new\n")
        new_inode = tmp.stat().st_ino

    assert _snapshot(target) == {"sub/new.bin": b"\x00\x01" * 1000, "new.txt": b"new\n"}
    assert target.stat().st_ino == new_inode  # the tree was moved in, not copied
    assert target.stat().st_mode & 0o777 == 0o777 & ~io._umask()
    assert os.listdir(target.parent) == ["out"]
    expected = {"exchange": "exchanged", "fallback": "refused"}[swap]
    assert calls == ([] if old == "none" else [expected])


@pytest.mark.skipif(io._renameat2() is None, reason="no renameat2 in libc")
def test_exchange_swaps_a_file_and_a_directory(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"file a")
    b.mkdir()
    (b / "inner").write_bytes(b"inner b")

    io._exchange(a, b)

    assert (a / "inner").read_bytes() == b"inner b"
    assert b.read_bytes() == b"file a"
    with pytest.raises(FileNotFoundError):
        io._exchange(a, tmp_path / "missing")


@pytest.mark.parametrize("writer", ["path", "dir"])
def test_next_write_removes_only_stale_siblings_of_that_path(tmp_path: Path, writer: str) -> None:
    stale_files = [".out.abcd1234.tmp", ".out.zz_9yx00.old"]
    stale_dirs = [".out.k2j4h5g6.partial", ".out.q1w2e3r4.old"]
    keep = [
        ".out.b.abcd1234.tmp",  # a temp of the sibling output "out.b"
        ".outx.abcd1234.tmp",
        "out.abcd1234.tmp",
        ".out.keep",
        ".out.abcd1234.tmp.bak",
        ".out.ABCD1234.partial",
        "other",
    ]
    for name in stale_files + keep:
        (tmp_path / name).write_bytes(b"x")
    for name in stale_dirs:
        (tmp_path / name / "sub").mkdir(parents=True)
        (tmp_path / name / "sub" / "f").write_bytes(b"x")

    if writer == "path":
        io.write_json(tmp_path / "out", {"b": 1, "a": [1, 2]})
    else:
        with io.atomic_dir(tmp_path / "out") as tmp:
            (tmp / "f").write_bytes(b"y")

    assert sorted(os.listdir(tmp_path)) == sorted(keep + ["out"])


def test_write_json_is_deterministic_with_default_file_mode(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    io.write_json(a, {"z": 1, "a": {"y": 2, "b": 3}})
    io.write_json(b, {"a": {"b": 3, "y": 2}, "z": 1})

    assert (
        a.read_bytes()
        == b.read_bytes()
        == b'{\n  "a": {\n    "b": 3,\n    "y": 2\n  },\n  "z": 1\n}\n'
    )
    assert a.stat().st_mode & 0o777 == 0o666 & ~io._umask()
