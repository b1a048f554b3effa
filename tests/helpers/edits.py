"""Editing a finished render (tests/test_edit*.py): the story, the command, and what a test measures of an edit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .engine_hooks import watch_executor
from .stories import write_story

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
STORY = [
    "[Lisa] a girl with a red scarf",
    "[Tom] an old fisherman",
    "",
    "[Lisa] walks to the harbour #Morning",
    "[Tom] mends a net #Tom at work",
    "[Lisa] waves from the pier #Goodbye",
]


def command(story: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return [f"story.path={story}", "model=tiny", "render.iterations=1", "render.steps=2", "render.height=64",
            "render.width=64", "render.seed_policy=per_frame", "cluster.workers=1", f"output_dir={out}",
            f"model.cache_dir={cache}", *extra]


def render(*args: str) -> None:
    """The launcher's work in this process (so a test can count the renders), from its overrides."""
    from storyadapter.edit_story import edit_story
    from storyadapter.launch import compose_config, editing
    from storyadapter.render_story import render_story

    cfg = compose_config(list(args))
    (edit_story if editing(cfg) else render_story)(cfg, Path(cfg.output_dir))


def launch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "storyadapter.launch", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, (proc.returncode, proc.stderr[-2000:])
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def files(out: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file of the render (not the edit history): path -> (inode, mtime_ns, bytes)."""
    found = {}
    for p in sorted(out.rglob("*")):
        if p.is_file() and "edits" not in p.relative_to(out).parts:
            st = p.stat()
            found[str(p.relative_to(out))] = (st.st_ino, st.st_mtime_ns, p.read_bytes())
    return found


def copy_of(finished: Path, tmp_path: Path, lines: list[str]) -> tuple[Path, Path]:
    """A copy of the finished render to edit, and the edited story file."""
    out = tmp_path / "render"
    shutil.copytree(finished, out)
    return write_story(tmp_path / "story.txt", lines), out


def count_renders(monkeypatch) -> list[int]:
    """The frames the render actors render from now on, as they finish."""
    rendered: list[int] = []
    watch_executor(monkeypatch, on_batches=lambda ex, it, batches: rendered.extend(r.frame for b in batches for r in b.frames))
    return rendered


def edit_copy(finished: Path, tmp_path: Path, cache: Path, monkeypatch, lines: list[str]):
    """`lines` as the story of a copy of the finished render, rendered with edit=true in this process: the copy's
    folder, its files before and after (`files`), and the frames rendered."""
    story, out = copy_of(finished, tmp_path, lines)
    before = files(out)
    rendered = count_renders(monkeypatch)
    render(*command(story, out, cache, "edit=true"))
    return out, before, files(out), rendered


def frames(out: Path, it: int = 1) -> list[str]:
    return [f"iter_{it:02d}/frame_{i:04d}.png" for i in range(3)]
