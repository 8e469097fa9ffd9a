"""The one timing primitive: a device-aware stage timer, warm-up/repeat, median with p10/p90 and n."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

Clock = Callable[[], float]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but torch sees no CUDA device")
    return dev


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class StageTimer:
    """Opens and closes named stages; synchronizes the device at every edge so a stage owns its kernels.

    Nested stages (``rpn.nms`` inside ``rpn``) are timed the same way and kept apart from the sum.
    ``clock`` is injectable so tests can check the accounting without wall time.
    """

    def __init__(self, device: torch.device | str = "cpu", clock: Clock = time.perf_counter,
                 record_function: bool = True) -> None:
        self.device = torch.device(device)
        self.clock = clock
        self.record_function = record_function
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        ctx = torch.profiler.record_function(name) if self.record_function else contextlib.nullcontext()
        with ctx:
            synchronize(self.device)
            start = self.clock()
            try:
                yield
            finally:
                synchronize(self.device)
                self.times[name] = self.times.get(name, 0.0) + (self.clock() - start) * 1e3

    def ms(self) -> dict[str, float]:
        return dict(self.times)


class Timers:
    """Several timers over the same stages (e.g. wall clock and process CPU time), opened and closed together."""

    def __init__(self, *timers) -> None:
        self.timers = timers

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for t in self.timers:
                stack.enter_context(t.stage(name))
            yield


class NullTimer:
    """Same interface, no cost: the pipeline runs identically without a profiler."""

    device = torch.device("cpu")

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        yield

    def ms(self) -> dict[str, float]:
        return {}


@dataclass(frozen=True)
class Summary:
    median: float
    p10: float
    p90: float
    n: int

    def __str__(self) -> str:
        return f"{self.median:.2f} ms (p10 {self.p10:.2f}, p90 {self.p90:.2f}, n={self.n})"


def summarize(samples: list[float] | np.ndarray) -> Summary:
    a = np.asarray(samples, dtype=float)
    if a.size == 0:
        return Summary(float("nan"), float("nan"), float("nan"), 0)
    return Summary(float(np.median(a)), float(np.percentile(a, 10)), float(np.percentile(a, 90)), int(a.size))


def benchmark(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5,
              device: torch.device | str = "cpu", clock: Clock = time.perf_counter) -> list[float]:
    """Run ``fn`` ``warmup`` times (dropped), then ``repeats`` times; return the repeat times in ms."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        synchronize(device)
        t0 = clock()
        fn()
        synchronize(device)
        out.append((clock() - t0) * 1e3)
    return out


class PeakMemory:
    """Peak memory of a block in MB: CUDA max-allocated on a GPU; on the CPU the resident high-water mark
    (VmHWM) less the RSS at the start.

    VmHWM never goes down within a process, so it is reset on entry through ``/proc/self/clear_refs``.
    No sampling thread: on a two-core machine a thread waking every few milliseconds stalls every
    two-thread parallel region of the model it is measuring. Where the reset is refused, the figure is the
    process's high-water mark so far, and ``reset`` says so.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.peak_mb = float("nan")
        self.reset = False
        self._base = 0.0

    @staticmethod
    def _status_mb(key: str) -> float:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset = True
        except OSError:
            self.reset = False
        self._base = self._status_mb("VmRSS")
        return self

    def current_mb(self) -> float:
        """The peak so far (the profiler writes rows while the block is still open)."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return self._status_mb("VmHWM") - self._base

    def __exit__(self, *exc) -> None:
        self.peak_mb = self.current_mb()
