"""Watchdog of a test topology: cleans up if its owner dies.

Started by :class:`~django_readonly_pool.testing.topology.Topology` with a pipe
on stdin. It blocks reading that pipe; end of file means the owner closed it
(a normal stop, which already cleaned up) or died (killed, crashed). Either way
it then stops whatever still runs in the topology directory and removes it.

Usage: ``python -m django_readonly_pool.testing._watchdog BASE_DIR BINDIR``
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path


def _cleanup(base: Path, bindir: Path) -> None:
    if not base.exists():
        return
    bouncer_pid = base / "pgbouncer" / "pgbouncer.pid"
    with contextlib.suppress(OSError, ValueError, ProcessLookupError):
        os.kill(int(bouncer_pid.read_text().strip()), signal.SIGKILL)
    for child in sorted(base.iterdir()):
        pidfile = child / "postmaster.pid"
        if not pidfile.exists():
            continue
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            pid = int(pidfile.read_text().split("\n", 1)[0])
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown of the postmaster
            for _ in range(100):
                if not pidfile.exists():  # removed by the postmaster on exit
                    break
                time.sleep(0.05)
            else:
                os.kill(pid, signal.SIGKILL)
    shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str]) -> int:
    base, bindir = Path(argv[1]), Path(argv[2])
    with contextlib.suppress(OSError):
        (base / "watchdog.pid").write_text(str(os.getpid()))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal hits us too
    with contextlib.suppress(Exception):
        while sys.stdin.buffer.read(4096):
            pass
    _cleanup(base, bindir)
    return 0


if __name__ == "__main__":  # pragma: no cover - runs as a separate process
    raise SystemExit(main(sys.argv))
