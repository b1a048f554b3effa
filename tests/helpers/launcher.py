"""Running `python -m storyadapter.launch` from a test: as a subprocess, as users run it (launch), or in this
process (render, for tests that patch the driver or share this process's Ray), and in a thread (in_background)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def launch_command(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "storyadapter.launch", *overrides]


def launch(*overrides: str, cwd: Path | None = None, env: dict | None = None,
           timeout: int = 300) -> subprocess.CompletedProcess:
    """The launcher as a subprocess, to its end; stdout and stderr come back as text. Its environment is this
    process's as it is now, as a shell's child gets it: a Ray started in this process since import (a test
    cluster) set RAY_AUTH_MODE=token here, and a launcher that joins that cluster needs it too."""
    env = env or {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(launch_command(*overrides), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def render(out_dir: Path, *overrides: str) -> Path:
    """What `python -m storyadapter.launch *overrides output_dir=out_dir` renders, done in this process."""
    from storyadapter.launch import compose_config
    from storyadapter.render_story import render_story

    return render_story(compose_config([*overrides, f"output_dir={out_dir}"]), out_dir)


def in_background(fn: Callable, *args) -> tuple[threading.Thread, list[BaseException]]:
    """fn(*args) in a started thread; what it raised ends up in the returned list, for the test to assert on."""
    errors: list[BaseException] = []

    def run():
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the test's assertion
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors
