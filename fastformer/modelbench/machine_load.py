"""Other work on the machine during a benchmark. The 1-minute load average counts every runnable
thread on the machine, ours included, so during a run it sits near the threads we use when the machine
is otherwise idle; above them, other processes took turns on our cores and the numbers mean little
(measured in issue 17: at load 2-4.7 on 2 cores fastformer read 0.93x of Hugging Face on GPT-2 batch 1,
1.4x on a quiet machine). Read before the run and after every grid point; `wait_quiet` can hold the
run until the machine is quiet."""
import os
import time
from typing import Callable

# Before the run our own process is idle: a quiet machine's 1-minute load is other processes' alone,
# at most half a core on average.
QUIET_LOAD = 0.5
POLL_S = 5.0  # the kernel updates the load average every 5 s


def read_load_average() -> float | None:
    """The machine's 1-minute load average, or None where the platform has none."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _read() -> float | None:
    return read_load_average()  # looked up per call, so tests can replace the source


def wait_quiet(max_s: float, on_wait: Callable[[float], None] | None = None, read=_read, sleep=None,
               clock=None) -> dict:
    """Polls the load every POLL_S seconds until it is at most QUIET_LOAD, for at most max_s seconds.
    on_wait(load) is called once, before the first sleep. Returns what happened, for the JSON."""
    sleep, clock = sleep or time.sleep, clock or time.monotonic  # looked up per call: tests replace them
    started = clock()
    load = read()
    if on_wait and load is not None and load > QUIET_LOAD and max_s > 0:
        on_wait(load)
    while load is not None and load > QUIET_LOAD and clock() - started < max_s:
        sleep(min(POLL_S, max_s - (clock() - started)))
        load = read()
    return {"max_s": max_s, "waited_s": round(clock() - started, 1), "quiet_load": QUIET_LOAD,
            "load_average_1m": load, "quiet": load is None or load <= QUIET_LOAD}


class LoadMonitor:
    """The load before a run and after each of its grid points, judged against the threads in use."""

    def __init__(self, threads: int, read: Callable[[], float | None] = _read):
        self.threads, self._read = threads, read
        self.before = read()
        self.during: list[float] = []

    def sample(self) -> float | None:
        load = self._read()
        if load is not None:
            self.during.append(load)
        return load

    def busy(self, load: float | None) -> bool:
        return load is not None and load > self.threads

    def describe(self) -> dict:
        peak = max(self.during, default=None)
        return {"threads": self.threads, "load_average_1m_before": self.before,
                "load_average_1m_during": self.during, "load_average_1m_during_max": peak,
                "busy": self.busy(peak) or self.busy(self.before), "warning": self.warning()}

    def warning(self) -> str | None:
        peak = max(self.during, default=None)
        if self.busy(peak):
            return (f"the machine was busy: the 1-minute load average reached {peak:.1f} during the run, above the "
                    f"{self.threads} threads in use, so other processes shared the cores; these timings are not "
                    f"comparable with a quiet run")
        if self.busy(self.before):
            return (f"the machine was busy before the run (1-minute load average {self.before:.1f}, above the "
                    f"{self.threads} threads in use); the first points may have shared the cores")
        return None
