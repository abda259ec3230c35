"""RunFolder: one run per folder (lock), writability found first, --overwrite keeps the
user's files, and a failed start leaves nothing behind."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from soundguide.core import runfolder
from soundguide.core.errors import OutputError
from soundguide.core.runfolder import LOCK_NAME, RunFolder, is_own_file


def test_lock_is_held_while_open_and_released_on_close(tmp_path):
    out = tmp_path / "out"
    with RunFolder(out) as folder:
        holder = json.loads((out / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(
            OutputError, match=rf"another soundguide run \(pid {os.getpid()}"
        ) as info:
            RunFolder(out).open()
        assert "another --out" in info.value.hint
        assert folder.locked
    assert not (out / LOCK_NAME).exists()
    with RunFolder(out):  # free again
        pass


def test_second_run_is_refused_even_with_overwrite(tmp_path):
    with RunFolder(tmp_path / "out"):
        with pytest.raises(OutputError, match="another soundguide run"):
            RunFolder(tmp_path / "out", overwrite=True).open()


def test_lock_of_a_dead_process_does_not_block(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    # a lock file left by a run killed with SIGKILL: nobody holds the flock
    (out / LOCK_NAME).write_text(json.dumps({"pid": 999999999, "host": "x"}) + "\n")
    with RunFolder(out):  # the stale lock alone does not make the folder "not empty"
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()


@pytest.mark.subprocess
def test_lock_held_by_another_process_names_its_pid_and_goes_with_it(tmp_path):
    out = tmp_path / "out"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from soundguide.core.runfolder import RunFolder; "
            f"RunFolder({str(out)!r}).open(); print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=rf"\(pid {child.pid}"):
            RunFolder(out).open()
    finally:
        child.kill()  # SIGKILL: no clean-up runs in the child
        child.wait()
    assert (out / LOCK_NAME).exists()  # left behind by the killed run ...
    with RunFolder(out):  # ... but the operating system released its lock
        pass


def test_overwrite_removes_only_soundguides_files(tmp_path):
    steps = tmp_path / "steps"
    steps.mkdir()
    for name in ("00003.pt", "00003.png", "notes.txt", "my-best.pt"):
        (steps / name).write_text("x")
    for name in ("edited.png", "run.json", "losses.csv", ".edited.png.0a1b2c3d.tmp", "mine.png"):
        (tmp_path / name).write_text("x")
    with RunFolder(tmp_path, overwrite=True):
        pass
    assert sorted(p.name for p in steps.iterdir()) == ["my-best.pt", "notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.png", "steps"]


def test_overwrite_removes_an_emptied_steps_folder(tmp_path):
    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / "00000.pt").write_text("x")
    with RunFolder(tmp_path, overwrite=True):
        pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("relative", "own"),
    [
        ("run.json", True),
        ("losses.csv", True),
        ("steps/00012.png", True),
        ("steps/123456.pt", True),
        ("steps/12.pt", False),
        ("steps/notes.txt", False),
        ("notes/run.json", False),
        (".run.json.deadbeef.tmp", True),
        (".bashrc", False),
    ],
)
def test_is_own_file(relative, own):
    assert is_own_file(relative) is own


def test_failed_start_removes_the_folders_it_created(tmp_path):
    folder = RunFolder(tmp_path / "a" / "b" / "c")
    folder.open()
    assert (tmp_path / "a" / "b" / "c").is_dir()
    folder.close(keep=False)
    assert list(tmp_path.iterdir()) == []


def test_failed_start_keeps_a_folder_that_existed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    folder = RunFolder(out)
    folder.open()
    folder.close(keep=False)
    assert out.is_dir() and list(out.iterdir()) == []


def test_failed_start_keeps_what_was_written(tmp_path):
    folder = RunFolder(tmp_path / "a" / "b")
    folder.open()
    (tmp_path / "a" / "b" / "steps").mkdir()
    (tmp_path / "a" / "b" / "steps" / "00000.pt").write_text("x")
    folder.close(keep=False)
    assert (tmp_path / "a" / "b" / "steps" / "00000.pt").exists()


def test_refused_folder_is_not_left_behind(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    with pytest.raises(OutputError, match="not empty"):
        RunFolder(tmp_path / "taken").open()
    assert not (tmp_path / "taken" / LOCK_NAME).exists()


def test_path_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="exists and is not a folder") as info:
        RunFolder(tmp_path / "f").open()
    assert info.value.hint == "choose another --out"
    with pytest.raises(OutputError, match="cannot create output folder") as info:
        RunFolder(tmp_path / "f" / "sub").open()
    assert info.value.hint == "choose an --out in a folder you can write to"


@pytest.mark.parametrize(
    "path", ["/proc/soundguide-test", "/proc/self", "/sys/kernel", "/sys/kernel/sg"]
)
def test_system_folders_are_refused(path):
    if not Path(path).parent.exists():
        pytest.skip(f"no {Path(path).parent} here")
    with pytest.raises(OutputError, match="cannot (create|write to) output folder"):
        RunFolder(path, overwrite=True).open()


def test_read_only_folder_is_found_by_the_probe(tmp_path, monkeypatch):
    # root ignores file modes, so a read-only mount is simulated at the lock's open()
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).startswith(str(tmp_path)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(runfolder.os, "open", read_only)
    out = tmp_path / "ro"
    out.mkdir()
    with pytest.raises(
        OutputError, match="cannot write to output folder .*Read-only file system"
    ) as info:
        RunFolder(out).open()
    assert info.value.hint == "choose an --out in a folder you can write to"


def test_full_disk_is_found_by_the_probe(tmp_path, monkeypatch):
    def full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runfolder.os, "pwrite", full)
    with pytest.raises(OutputError, match="No space left on device"):
        RunFolder(tmp_path / "out").open()
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores file modes")
def test_read_only_folder_by_mode(tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="cannot write to output folder"):
            RunFolder(out).open()
    finally:
        out.chmod(0o755)


@pytest.mark.parametrize(
    ("relative", "own"),
    [("steps/sub/00012.png", False), ("notes/00012.png", False), ("00012.png", False)],
)
def test_is_own_file_only_directly_in_steps(relative, own):
    assert is_own_file(relative) is own


def test_context_manager_keeps_the_folder_on_success_and_cleans_on_error(tmp_path):
    with RunFolder(tmp_path / "ok"):
        pass
    assert (tmp_path / "ok").is_dir()  # a finished run keeps its (even empty) folder
    with pytest.raises(RuntimeError):
        with RunFolder(tmp_path / "failed" / "deep"):
            raise RuntimeError("loading failed")
    assert not (tmp_path / "failed").exists()


def test_close_keeps_by_default(tmp_path):
    folder = RunFolder(tmp_path / "new")
    folder.open()
    folder.close()
    assert (tmp_path / "new").is_dir() and not folder.locked


def test_close_goes_on_past_folders_already_gone(tmp_path):
    folder = RunFolder(tmp_path / "a" / "b")
    folder.open()
    (tmp_path / "a" / "b" / LOCK_NAME).unlink()
    (tmp_path / "a" / "b").rmdir()  # someone removed the innermost folder already
    folder.close(keep=False)
    assert not (tmp_path / "a").exists()


def test_lock_message_names_pid_and_start(tmp_path):
    with RunFolder(tmp_path / "out"):
        started = json.loads((tmp_path / "out" / LOCK_NAME).read_text())["started"]
        with pytest.raises(OutputError) as info:
            RunFolder(tmp_path / "out").open()
    assert f"(pid {os.getpid()}, since {started})" in info.value.message
    assert " on " not in info.value.message  # this machine: no host named


@pytest.fixture
def no_flock(monkeypatch):
    """A file system without locks (some network mounts): flock fails with ENOLCK."""
    import fcntl

    def refuse(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)


def write_holder(folder: Path, **holder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps(holder) + "\n")


def test_without_locks_a_live_pid_holds_the_folder(tmp_path, no_flock):
    import socket

    write_holder(tmp_path / "out", pid=os.getpid(), host=socket.gethostname())
    with pytest.raises(OutputError, match=rf"another soundguide run \(pid {os.getpid()}"):
        RunFolder(tmp_path / "out").open()


def test_without_locks_a_dead_pid_does_not(tmp_path, no_flock):
    import socket

    write_holder(tmp_path / "out", pid=2**22 + 12345, host=socket.gethostname())
    with RunFolder(tmp_path / "out"):
        assert json.loads((tmp_path / "out" / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_without_locks_another_machines_run_is_assumed_alive(tmp_path, no_flock):
    write_holder(tmp_path / "out", pid=1, host="elsewhere", started="2026-01-01T00:00:00+00:00")
    with pytest.raises(OutputError, match=r"\(pid 1 on elsewhere, since 2026-01-01"):
        RunFolder(tmp_path / "out").open()


def test_without_locks_a_holder_without_pid_does_not_block(tmp_path, no_flock):
    write_holder(tmp_path / "out", host="elsewhere")
    with RunFolder(tmp_path / "out"):
        pass


@pytest.mark.parametrize("code", [errno.EAGAIN, errno.EACCES])
def test_flock_refusals_other_than_blocking_mean_taken(tmp_path, monkeypatch, code):
    import fcntl

    def busy(fd, operation):
        raise OSError(code, "Resource temporarily unavailable")

    monkeypatch.setattr(fcntl, "flock", busy)
    with pytest.raises(OutputError, match="another soundguide run"):
        RunFolder(tmp_path / "out").open()


def test_liveness_probe_sends_no_signal(tmp_path, no_flock, monkeypatch):
    import socket

    sent = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    write_holder(tmp_path / "out", pid=4242, host=socket.gethostname())
    with pytest.raises(OutputError, match=r"pid 4242"):
        RunFolder(tmp_path / "out").open()
    assert sent == [(4242, 0)]  # signal 0 asks whether the process exists, nothing more


def test_a_process_of_another_user_holds_the_folder(tmp_path, no_flock, monkeypatch):
    import socket

    def not_yours(pid, sig):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "kill", not_yours)
    write_holder(tmp_path / "out", pid=4242, host=socket.gethostname())
    with pytest.raises(OutputError, match=r"pid 4242"):
        RunFolder(tmp_path / "out").open()


@pytest.mark.parametrize("content", ["[4242]", '"pid"', "{not json", "\xff\xfe"])
def test_a_lock_file_of_another_form_does_not_block(tmp_path, no_flock, content):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK_NAME).write_text(content, errors="surrogateescape")
    with RunFolder(tmp_path / "out"):
        assert json.loads((tmp_path / "out" / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_overwrite_that_cannot_remove_a_file_says_which_and_what_to_do(tmp_path, monkeypatch):
    (tmp_path / "run.json").write_text("{}")
    real_unlink = Path.unlink

    def refuse(self, *args, **kwargs):
        if self.name == "run.json":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", refuse)
    with pytest.raises(OutputError) as info:
        RunFolder(tmp_path, overwrite=True).open()
    assert (
        info.value.message
        == f"--overwrite: cannot remove {tmp_path / 'run.json'}: Permission denied"
    )
    assert info.value.hint == "remove it yourself, or choose another --out"
    assert (tmp_path / "run.json").exists()


def test_remove_own_files_returns_what_it_removed(tmp_path):
    (tmp_path / "steps").mkdir()
    for name in ("edited.png", "steps/00001.pt", "mine.txt"):
        (tmp_path / name).write_text("x")
    folder = RunFolder(tmp_path)
    assert sorted(folder.remove_own_files()) == [
        tmp_path / "edited.png",
        tmp_path / "steps" / "00001.pt",
    ]


@pytest.mark.parametrize(
    ("holder", "described"),
    [({}, "pid unknown"), ({"pid": "12"}, "pid unknown"), ({"pid": 12}, "pid 12")],
)
def test_a_held_lock_describes_what_its_file_says(tmp_path, monkeypatch, holder, described):
    import fcntl

    def busy(fd, operation):
        raise BlockingIOError(errno.EWOULDBLOCK, "Resource temporarily unavailable")

    monkeypatch.setattr(fcntl, "flock", busy)
    write_holder(tmp_path / "out", **holder)
    with pytest.raises(OutputError) as info:
        RunFolder(tmp_path / "out").open()
    assert (
        info.value.message
        == f"another soundguide run ({described}) is writing to {tmp_path / 'out'}"
    )
    assert info.value.hint == "wait until it has finished, or choose another --out"


def test_the_lock_file_says_who_holds_it_and_nothing_else(tmp_path):
    import datetime
    import socket

    write_holder(tmp_path / "out", pid=2**22 + 12345, host=socket.gethostname(), junk="x" * 5000)
    with RunFolder(tmp_path / "out"):
        text = (tmp_path / "out" / LOCK_NAME).read_text()
        holder = json.loads(text)  # the older, longer holder is gone entirely
    assert text.endswith("}\n") and sorted(holder) == ["host", "pid", "started"]
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    started = datetime.datetime.fromisoformat(holder["started"])
    assert started.utcoffset() == datetime.timedelta(0) and started.microsecond == 0


def test_a_lock_that_cannot_be_written_is_one_error_with_a_hint(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError) as info:
        RunFolder(tmp_path / "out").open()
    assert info.value.message == (
        f"cannot write to output folder {tmp_path / 'out'}: No space left on device"
    )
    assert info.value.hint == "free some space or choose another --out"


class _FakeMsvcrt:
    LK_NBLCK = 2

    def __init__(self, refuse):
        self.refuse, self.calls = refuse, []

    def locking(self, *args):
        self.calls.append(args)
        if self.refuse:
            raise OSError(errno.EACCES, "Permission denied")


@pytest.mark.parametrize("refuse", [False, True])
def test_windows_locks_one_byte_without_waiting(monkeypatch, refuse):
    fake = _FakeMsvcrt(refuse)
    monkeypatch.setitem(sys.modules, "fcntl", None)  # import fcntl fails as on Windows
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    assert runfolder._try_lock(7) is not refuse
    assert fake.calls == [(7, fake.LK_NBLCK, 1)]


def test_the_lock_file_is_made_with_the_umask(tmp_path):
    umask = os.umask(0o002)
    try:
        with RunFolder(tmp_path / "out"):
            mode = (tmp_path / "out" / LOCK_NAME).stat().st_mode & 0o777
    finally:
        os.umask(umask)
    assert mode == 0o664  # 0o666 less the umask: read and write, never execute


def test_a_lock_file_removed_before_it_was_locked_is_taken_again(tmp_path, monkeypatch):
    """The previous owner may unlink the lock file between our open and our lock: a lock
    on that file would lock nothing, so the file is opened again."""
    real_stat, opened = os.stat, []
    real_open = os.open

    def stat(path, *args, **kwargs):
        if str(path).endswith(LOCK_NAME) and len(opened) == 1:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        return real_stat(path, *args, **kwargs)

    def open_(path, *args, **kwargs):
        if str(path).endswith(LOCK_NAME):
            opened.append(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(runfolder.os, "stat", stat)
    monkeypatch.setattr(runfolder.os, "open", open_)
    with RunFolder(tmp_path / "out"):
        assert json.loads((tmp_path / "out" / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert len(opened) == 2


def test_a_lock_file_that_keeps_changing_is_an_error(tmp_path, monkeypatch):
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        if str(path).endswith(LOCK_NAME):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(runfolder.os, "stat", stat)
    with pytest.raises(OutputError) as info:
        RunFolder(tmp_path / "out").open()
    assert info.value.message == (
        f"cannot lock output folder {tmp_path / 'out'}: the lock file keeps changing"
    )


def test_ctrl_c_while_locking_leaves_another_runs_lock_file(tmp_path, monkeypatch):
    """Interrupted before the lock was ours: the file belongs to someone else."""
    import socket

    write_holder(tmp_path / "out", pid=4242, host=socket.gethostname())

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(runfolder, "_try_lock", interrupted)
    with pytest.raises(KeyboardInterrupt):
        RunFolder(tmp_path / "out").open()
    assert json.loads((tmp_path / "out" / LOCK_NAME).read_text())["pid"] == 4242


def test_a_failed_holder_write_removes_our_lock_even_if_it_is_gone_already(tmp_path, monkeypatch):
    lock = tmp_path / "out" / LOCK_NAME

    def full(fd):
        lock.unlink()  # e.g. a user cleaning up by hand
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runfolder.os, "fsync", full)
    with pytest.raises(OutputError, match="No space left on device"):
        RunFolder(tmp_path / "out").open()
    assert not (tmp_path / "out").exists()
