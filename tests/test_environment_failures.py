"""Environment failures in `python -m storyadapter.launch`: a file in the way, a read-only or full disk,
no permission. Each is one `error: output_dir=...: ...` line and a non-zero exit, with nothing already
written lost. Real file systems: tmpfs and read-only mounts when the tests run as root, else skipped."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

from storyadapter.errors import UserError, environment_error, root_cause

from .helpers.launcher import ENV, launch_command
from .helpers.stories import write_story

AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="mounting tmpfs / read-only file systems needs root")


def launch(story: Path, out: Path, cache: Path, *extra: str, user: int | None = None) -> subprocess.CompletedProcess:
    cmd = launch_command(f"story.path={story}", "model=tiny", "render.iterations=1", "render.steps=2",
                         "render.height=64", "render.width=64", "cluster.workers=1", f"output_dir={out}",
                         f"model.cache_dir={cache}", *extra)
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, cwd=story.parent, env=ENV, capture_output=True, text=True, timeout=300)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "RayTaskError" not in proc.stderr and "\x1b[" not in proc.stderr, \
        proc.stderr[-3000:]
    return errors[0]


@pytest.fixture()
def mount(tmp_path):
    """mount(options) -> a fresh tmpfs folder, unmounted at the end of the test."""
    mounted = []

    def make(options: str) -> Path:
        where = tmp_path / f"mnt{len(mounted)}"
        where.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
        mounted.append(where)
        return where

    yield make
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture()
def story(tmp_path) -> Path:
    return write_story(tmp_path / "story.txt", ["[Mia] a girl with a red scarf", "", "[Mia] reads a map. #The map",
                                                "[NC] a river at dawn. #The river"])


def test_output_dir_under_a_regular_file_fails_at_once_and_the_file_is_untouched(story, tmp_path, tiny_cache):
    blocker = tmp_path / "taken"
    blocker.write_text("mine\n")
    started = time.monotonic()
    proc = launch(story, blocker / "out", tiny_cache)
    assert one_error_line(proc) == f"error: output_dir={blocker / 'out'}: {blocker} is a file, not a folder"
    assert time.monotonic() - started < 30 and "ready (pids" not in proc.stderr  # before Ray started
    assert blocker.read_text() == "mine\n"


@AS_ROOT
def test_read_only_output_dir(story, mount, tiny_cache):
    ro = mount("ro,size=1m")
    proc = launch(story, ro / "out", tiny_cache)
    assert one_error_line(proc) == f"error: output_dir={ro / 'out'}: Read-only file system"
    assert "ready (pids" not in proc.stderr


@AS_ROOT
def test_permission_denied(tiny_cache):
    """The render runs as nobody: root ignores permission bits. The folder nobody reads from is outside pytest's
    private tmp folders; the model is never reached, the check comes first."""
    shared = Path(tempfile.mkdtemp(prefix="storyadapter-perm-"))
    try:
        shared.chmod(0o755)
        story = write_story(shared / "story.txt", ["[Mia] a girl", "", "[Mia] reads a map. #The map"])
        locked = shared / "locked"
        locked.mkdir(mode=0o755)  # root's
        proc = launch(story, locked / "out", tiny_cache, user=65534)
        assert one_error_line(proc) == f"error: output_dir={locked / 'out'}: Permission denied", proc.stderr[-2000:]
        assert list(locked.iterdir()) == []
    finally:
        shutil.rmtree(shared)


@AS_ROOT
def test_a_full_disk_at_the_start_is_found_before_ray_starts(story, mount, tiny_cache):
    full = mount("size=16k")
    filler = full / "filler"
    with open(filler, "wb") as f:
        try:
            f.write(b"\1" * 64 * 1024)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    kept = filler.read_bytes()
    proc = launch(story, full / "out", tiny_cache)
    assert one_error_line(proc) == f"error: output_dir={full / 'out'}: No space left on device"
    assert "ready (pids" not in proc.stderr
    assert filler.read_bytes() == kept and sorted(p.name for p in full.iterdir()) == ["filler"]


def _assert_nothing_half_written(out: Path) -> None:
    assert not [p for p in out.rglob("*") if p.name.startswith(".")], "temporary files left behind"
    for png in out.rglob("*.png"):
        Image.open(png).load()  # every frame on disk is whole


@pytest.mark.slow
@AS_ROOT
def test_a_disk_that_fills_while_frames_are_written_keeps_the_finished_iteration(tmp_path, mount, tiny_cache):
    """Four frames of ~10 KB: config, iteration 0 and its manifest fit in 64 KiB, iteration 1 does not. The
    PNG write fails inside the Ray actor, so the cause arrives wrapped in a RayTaskError."""
    story = write_story(tmp_path / "cats.txt", [f"a cat on roof number {i}" for i in range(4)])
    disk = mount("size=64k")
    proc = launch(story, disk / "out", tiny_cache)
    assert one_error_line(proc) == f"error: output_dir={disk / 'out'}: No space left on device"
    assert "ready (pids" in proc.stderr  # it did fail mid-render, not at the probe (the actors were up)
    out = disk / "out"
    assert sorted(p.name for p in (out / "iter_00").iterdir()) == [f"frame_000{i}.png" for i in range(4)]
    assert (out / "manifest" / "iter_00.parquet").is_file() and not (out / "manifest" / "iter_01.parquet").exists()
    _assert_nothing_half_written(out)
    kept = {p.name: p.read_bytes() for p in (out / "iter_00").iterdir()}
    # Room again: the same command with resume=true finishes the render and iteration 0 stays as it was.
    subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
    done = launch(story, out, tiny_cache, "resume=true")
    assert done.returncode == 0, done.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in (out / "iter_00").iterdir()} == kept
    assert (out / "manifest" / "iter_01.parquet").is_file() and (out / "index.html").is_file()


@pytest.mark.slow
@AS_ROOT
def test_a_disk_that_fills_while_the_outputs_are_written(story, mount, tiny_cache):
    """Frames and manifests fit in 128 KiB; the comic and GIF after them do not."""
    disk = mount("size=128k")
    proc = launch(story, disk / "out", tiny_cache)
    assert one_error_line(proc) == f"error: output_dir={disk / 'out'}: No space left on device"
    out = disk / "out"
    assert (out / "manifest" / "iter_01.parquet").is_file() and not (out / "index.html").exists()
    _assert_nothing_half_written(out)


def test_environment_errors_are_unwrapped_from_chains_and_left_alone_otherwise(tmp_path):
    out = tmp_path / "out"
    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as exc:
        chained = exc
    assert str(environment_error(chained, out)) == f"output_dir={out}: No space left on device"
    elsewhere = PermissionError(errno.EACCES, "Permission denied", "/etc/shadow")
    assert str(environment_error(elsewhere, out)) == "/etc/shadow: Permission denied"
    inside = PermissionError(errno.EACCES, "Permission denied", str(out / "iter_00" / "frame_0000.png"))
    assert str(environment_error(inside, out)) == f"output_dir={out}: Permission denied"
    assert "ran out of memory" in str(environment_error(MemoryError(), out))
    assert environment_error(ValueError("a bug"), out) is None  # a bug keeps its traceback
    assert environment_error(OSError(errno.ECONNREFUSED, "refused"), out) is None
    assert isinstance(environment_error(UserError("x: y"), out), UserError)
    assert root_cause(chained) is chained.__cause__


@AS_ROOT
@pytest.mark.parametrize("trouble", ["read-only", "full"])
def test_regenerating_outputs_on_a_read_only_or_full_disk_is_one_line_and_keeps_the_frames(mount, trouble):
    """`python -m storyadapter.outputs DIR` writes comic pages, the GIF, contact sheet and index (no Ray, no model)."""
    from .helpers.renders import make_render_dir

    disk = mount("size=1m")
    out = make_render_dir(disk / "run", 6, iterations=2)
    if trouble == "full":  # room for nothing more than the frames and manifests
        with open(disk / "filler", "wb", buffering=0) as f, pytest.raises(OSError):
            while True:
                f.write(b"\1" * 4096)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    if trouble == "read-only":
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    proc = subprocess.run([sys.executable, "-m", "storyadapter.outputs", str(out)], env=ENV, capture_output=True,
                          text=True, timeout=120)
    expected = "Read-only file system" if trouble == "read-only" else "No space left on device"
    assert one_error_line(proc) == f"error: output_dir={out}: {expected}"
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing lost, nothing half-written
