"""Progress of the evaluation: one line per compiled program, with the task's and the whole stage's ETA.

A task of the protocol compiles and runs a handful of programs (each baseline's grid, each member of the learned
family, the long-horizon runs); compiling is most of a small experiment's time, so the console says what is
being compiled and, as each program finishes, how long it took and how long the task and the stage have left:

    evaluate: digits_mlp: 7 programs to compile and run (adam, sgdm, learned, hub, hub_inverted, lgl2o, gl2o)
    evaluate: digits_mlp: 3/7 learned (compiled 9.8s, ran 0.2s) | task 31s, ETA ~41s | stage 5/14, ETA ~45s

The stage's counts add up the tasks of this process (the thread runner: every task); a task run in another
process (a Dask worker) counts only its own programs there. Wall-clock only: nothing here reaches a result file.
"""

import sys
import threading
import time
from collections.abc import Callable

__all__ = ["TaskProgress", "write_line"]


def write_line(text: str) -> None:
    """Print one whole line at once (tasks run in threads: ``print`` writes the text and the newline apart)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class _Stage:
    """The programs of every task of this process (threads share it)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.total = self.done = 0
        self.start: float | None = None
        self.active = 0

    def begin(self, n: int) -> None:
        with self.lock:
            if self.active == 0:  # a new stage (or a new call of the library): start counting afresh
                self.total = self.done = 0
                self.start = time.perf_counter()
            self.active += 1
            self.total += n

    def finish_program(self) -> tuple[int, int, float]:
        with self.lock:
            self.done += 1
            return self.done, self.total, time.perf_counter() - (self.start or time.perf_counter())

    def end(self) -> None:
        with self.lock:
            self.active -= 1


_STAGE = _Stage()


def _eta(elapsed: float, done: int, total: int) -> str:
    return f"~{elapsed / done * (total - done):.0f}s" if done else "?"


class TaskProgress:
    """The progress lines of one task: announce its programs, then one line as each finishes."""

    def __init__(self, task: str, programs: list[str], log: Callable[[str], None] | None = write_line):
        self.task, self.programs, self.log = task, programs, log
        self.done = 0
        self.start = time.perf_counter()
        _STAGE.begin(len(programs))
        if log:
            log(f"evaluate: {task}: {len(programs)} programs to compile and run ({', '.join(programs)})")

    def program_done(self, name: str, compile_seconds: float, run_seconds: float) -> None:
        self.done += 1
        stage_done, stage_total, stage_elapsed = _STAGE.finish_program()
        if not self.log:
            return
        n, elapsed = len(self.programs), time.perf_counter() - self.start
        self.log(
            f"evaluate: {self.task}: {self.done}/{n} {name} (compiled {compile_seconds:.1f}s, ran {run_seconds:.1f}s)"
            f" | task {elapsed:.0f}s, ETA {_eta(elapsed, self.done, n)}"
            f" | stage {stage_done}/{stage_total}, ETA {_eta(stage_elapsed, stage_done, stage_total)}"
        )

    def close(self) -> None:
        _STAGE.end()
