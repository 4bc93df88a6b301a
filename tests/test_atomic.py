"""Crash-safe writes: concurrent commits of one folder, the modes of new files, stale temporaries of dead writers."""
import os
import subprocess
import threading
import time

import pytest

from mmtm.loaders.atomic import STALE_AGE_S, AtomicDir, atomic_write_text, locked, remove_stale_temporaries


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def owned_name(target: str, pid: int) -> str:
    """The temporary name a writer with this pid on this host gives `target` (see loaders.atomic)."""
    from mmtm.loaders.atomic import _host
    return f".{target}.tmp-{pid}-{_host()}-0123abcd"


def test_two_commits_of_one_folder_at_the_same_moment_both_succeed(tmp_path):
    for trial in range(40):
        root = tmp_path / str(trial)
        root.mkdir()
        barrier, errors = threading.Barrier(2), []

        def write(k):
            try:
                with AtomicDir(root / "out") as tmp:
                    (tmp / "who").write_text(str(k))
                    barrier.wait()  # both renames into place race
            except Exception as e:  # noqa: BLE001  any failure of either writer fails the test
                errors.append(repr(e))

        threads = [threading.Thread(target=write, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert (root / "out" / "who").read_text() in ("0", "1")
        assert sorted(p.name for p in root.iterdir()) == ["out"]


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_new_files_get_the_mode_a_plain_open_would(tmp_path, umask, file_mode, dir_mode):
    before = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "cur.json", "{}")
        with AtomicDir(tmp_path / "data") as tmp:
            (tmp / "x").write_text("1")
        (tmp_path / "plain").write_text("")
    finally:
        os.umask(before)
    assert os.stat(tmp_path / "cur.json").st_mode & 0o777 == file_mode == os.stat(tmp_path / "plain").st_mode & 0o777
    assert os.stat(tmp_path / "data").st_mode & 0o777 == dir_mode


def test_stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead, mine = dead_pid(), os.getpid()
    (tmp_path / owned_name("last.pt", dead)).write_bytes(b"half")
    (tmp_path / owned_name("data", dead).replace(".tmp-", ".old-")).mkdir()
    (tmp_path / owned_name("data", dead)).mkdir()
    (tmp_path / owned_name("last.pt", mine)).write_bytes(b"being written")   # a live writer
    (tmp_path / owned_name("best.pt", dead)).write_bytes(b"another target")
    old, young = tmp_path / ".last.pt.abcd1234.tmp", tmp_path / ".last.pt.wxyz9876.tmp"  # no pid: by age
    old.write_bytes(b"")
    young.write_bytes(b"")
    os.utime(old, (time.time() - STALE_AGE_S - 60,) * 2)
    (tmp_path / ".last.pt.lock").write_bytes(b"")                             # its holder was killed
    (tmp_path / ".notes").write_text("the user's")

    removed = remove_stale_temporaries(tmp_path / "last.pt") + remove_stale_temporaries(tmp_path / "data")
    assert sorted(p.name for p in removed) == sorted([owned_name("last.pt", dead), old.name, ".last.pt.lock",
                                                      owned_name("data", dead),
                                                      owned_name("data", dead).replace(".tmp-", ".old-")])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [owned_name("last.pt", mine), owned_name("best.pt", dead), young.name, ".notes"])


def test_a_held_lock_is_neither_removed_nor_shared(tmp_path):
    target = tmp_path / "out"
    order = []

    def wait_for_lock():
        with locked(target):
            order.append("waiter")

    with locked(target):
        assert remove_stale_temporaries(target) == [] and (tmp_path / ".out.lock").exists()
        waiter = threading.Thread(target=wait_for_lock)
        waiter.start()
        time.sleep(0.2)
        order.append("holder")
    waiter.join(5)
    assert order == ["holder", "waiter"]
    assert list(tmp_path.iterdir()) == []  # the lock file lives only while held


def test_a_write_removes_the_stale_temporaries_of_its_target(tmp_path):
    (tmp_path / owned_name("cur.json", dead_pid())).write_text("{")
    atomic_write_text(tmp_path / "cur.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cur.json"]


def test_a_full_disk_is_a_user_error_that_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    import errno

    from mmtm.loaders.errors import UserError

    target = tmp_path / "result.json"
    atomic_write_text(target, "old")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(UserError, match="result.json: no space left on the device"):
        atomic_write_text(target, "new")
    with pytest.raises(UserError, match="no space left"):
        with AtomicDir(tmp_path / "folder") as building:
            (building / "x").write_text("x")
            os.fsync(0)
    assert sorted(os.listdir(tmp_path)) == ["result.json"] and target.read_text() == "old"

HOLDER = """
import sys, time
from mmtm.loaders.atomic import hold
assert hold(sys.argv[1]) is None
print("held", flush=True)
time.sleep(60)
"""


def test_a_folder_lock_names_its_holder_and_is_free_once_the_holder_is_killed(tmp_path):
    import signal
    import sys

    from mmtm.loaders.atomic import hold, release

    lock = tmp_path / ".run.lock"
    other = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline() == "held\n"
    assert hold(lock) == f"pid {other.pid} on {os.uname().nodename}"
    other.send_signal(signal.SIGKILL)
    other.wait()
    assert lock.exists() and hold(lock) is None  # the dead holder's lock is taken over
    assert hold(lock) is None  # again by its holder: counted
    release(lock)
    assert lock.exists()
    release(lock)
    assert not lock.exists()
