"""Stopping the subprocesses tests start (sipws, peers): by pid, bounded."""

from __future__ import annotations

import subprocess

#: Seconds a process gets after SIGTERM before SIGKILL, and after SIGKILL.
STOP_TIMEOUT = 10.0


def stop_process(process: subprocess.Popen | None, timeout: float = STOP_TIMEOUT) -> int | None:
    """SIGTERM, then SIGKILL if it is still there after ``timeout``; its exit status (None: never started)."""
    if process is None:
        return None
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    return process.returncode
