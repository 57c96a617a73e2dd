"""Run named jobs (each a sequence of commands) a few at a time, one log file per job.

Shared by the benchmark sweeps (cleaning, ablation): on one GPU several small trainings fit at once;
on the 2-core CPU, run them one at a time (``parallel=1``).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

__all__ = ["run_all"]


def run_all(jobs: dict[str, list[list[str]]], parallel: int, logs: Path, keep_going: bool = False) -> list[str]:
    """Run every job's commands in order (a job stops at its first failing command).

    Args:
        jobs: name -> commands, each an argv list.
        parallel: jobs running at once.
        logs: folder of ``<name>.log`` (stdout and stderr of all the job's commands).
        keep_going: when False, the first failed job raises SystemExit (the others are stopped);
            when True, failures are returned and the other jobs go on.

    Returns:
        Names of the failed jobs.
    """
    logs.mkdir(parents=True, exist_ok=True)
    pending = list(jobs.items())
    running: dict[str, tuple[subprocess.Popen, list[list[str]], object]] = {}
    failed: list[str] = []

    def start(name: str, commands: list[list[str]], log) -> None:
        running[name] = (subprocess.Popen(commands[0], stdout=log, stderr=subprocess.STDOUT), commands[1:], log)

    try:
        while pending or running:
            while pending and len(running) < parallel:
                name, commands = pending.pop(0)
                start(name, commands, open(logs / f"{name}.log", "w"))
            for name, (process, rest, log) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[name]
                if process.returncode == 0 and rest:
                    start(name, rest, log)
                    continue
                log.close()
                if process.returncode != 0:
                    if not keep_going:
                        raise SystemExit(f"{name} failed (exit {process.returncode}); see {logs / f'{name}.log'}")
                    failed.append(name)
            time.sleep(0.5)
    finally:
        for process, _, log in running.values():
            process.kill()
            log.close()
    return failed
