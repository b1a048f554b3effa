"""Run the launcher and say on stdout when its driver reaches a point, for tests that act there.

    python tests/helpers/driver_at.py POINT ACTION KEY=VALUE ...

POINT is `part:N` (iteration N's manifest part is written) or `journal:N:K` (iteration N's journal holds
at least K frames, durable; an edit's journal, in its staging folder, counts too). ACTION is `pause` (the driver stays there, so that a test kills it at that
point and no later) or `go` (it carries on). The line `at POINT` on stdout is the event the test waits on.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from storyadapter import launch
from storyadapter.rundir import journal, manifest


def main() -> None:
    point, action, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    out_dir = Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("output_dir=")))
    said = threading.Event()

    def reached() -> None:
        if not said.is_set():
            said.set()
            print(f"at {point}", flush=True)
            if action == "pause":
                threading.Event().wait()

    kind, *numbers = point.split(":")
    if kind == "part":
        (iteration,) = map(int, numbers)
        write_part = manifest.write_part

        def write_part_then(out, records, *args, **kwargs):
            written = write_part(out, records, *args, **kwargs)
            if records and records[0].iteration == iteration:
                reached()
            return written

        manifest.write_part = write_part_then
    else:
        iteration, frames = map(int, numbers)
        append, path, seen = journal.Journal.append, journal.journal_path(out_dir, iteration), []

        def append_then(self, results):
            append(self, results)
            if self.path.name == path.name:
                seen.extend(results)
                if len(seen) >= frames:
                    reached()

        journal.Journal.append = append_then
    sys.argv = [launch.__file__, *overrides]
    launch.main()


if __name__ == "__main__":
    main()
