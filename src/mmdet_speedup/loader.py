"""Overlapped loading: decode and pre-process the next images in background threads while the model runs.

Yields in input order from a bounded window of futures. On CUDA the host-to-device copy runs in the
reader's own stream; the consumer's stream waits on it and the tensor is ``record_stream``-ed so the
caching allocator does not reuse its memory early. Errors surface in the caller with the image's name.
"""
from __future__ import annotations

import itertools
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import torch

from .pipeline import ImageLike, StagedPipeline
from .stats import aa_of


class ReaderError(RuntimeError):
    def __init__(self, name: str, cause: BaseException) -> None:
        super().__init__(f"reading {name} failed: {type(cause).__name__}: {cause}")
        self.name = name
        self.__cause__ = cause


@dataclass
class Prepared:
    name: str
    inputs: torch.Tensor
    samples: list
    event: object = None  # CUDA event recorded after the copy, on the reader's stream


def _name(src: ImageLike, i: int) -> str:
    return Path(src).name if isinstance(src, (str, Path)) else f"#{i}"


def _lower_priority(nice: int) -> None:
    """Run this reader thread at a lower priority (Linux: per-thread nice), so it takes idle cycles only.

    On a machine whose cores the model's own threads already fill, a reader at equal priority preempts them
    and every parallel region waits for the preempted thread.
    """
    import os
    import threading

    if nice and hasattr(os, "setpriority"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError:
            pass


class PrefetchReader:
    """Iterates ``Prepared`` inputs for ``sources`` in order, ``depth`` images ahead, with ``workers`` threads.

    ``nice`` lowers the reader threads' priority (0 keeps it equal to the model's).
    """

    def __init__(self, sources: Sequence[ImageLike], pipeline: StagedPipeline, *, depth: int = 4,
                 workers: int = 1, nice: int = 10) -> None:
        if depth < 1 or workers < 1:
            raise ValueError("depth and workers must be >= 1")
        self.sources = list(sources)
        self.pipe = pipeline
        self.depth = depth
        self.workers = workers
        self.nice = nice
        self.device = pipeline.device
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def _prepare(self, i: int, src: ImageLike) -> Prepared:
        name = _name(src, i)
        try:
            hb = self.pipe.preprocess(self.pipe.load(src))
            if self._stream is None:
                inputs, samples = self.pipe.to_device(hb)
                return Prepared(name, inputs, samples)
            with torch.cuda.stream(self._stream):
                inputs, samples = self.pipe.to_device(hb)
                ev = torch.cuda.Event()
                ev.record(self._stream)
            return Prepared(name, inputs, samples, ev)
        except Exception as e:
            raise ReaderError(name, e) from e

    def __iter__(self) -> Iterator[Prepared]:
        with ThreadPoolExecutor(self.workers, thread_name_prefix="reader", initializer=_lower_priority,
                                initargs=(self.nice,)) as pool:
            window: deque[Future] = deque()
            todo = iter(enumerate(self.sources))
            try:
                for i, src in itertools.islice(todo, self.depth):
                    window.append(pool.submit(self._prepare, i, src))
                while window:
                    item = window.popleft().result()  # raises ReaderError in the caller
                    nxt = next(todo, None)
                    if nxt is not None:
                        window.append(pool.submit(self._prepare, *nxt))
                    if item.event is not None:
                        cur = torch.cuda.current_stream(self.device)
                        cur.wait_event(item.event)
                        item.inputs.record_stream(cur)
                    yield item
            finally:
                for f in window:
                    f.cancel()


def run_serial(pipe: StagedPipeline, sources: Sequence[ImageLike]) -> list:
    return [pipe(s) for s in sources]


def run_overlapped(pipe: StagedPipeline, sources: Sequence[ImageLike], *, depth: int = 4,
                   workers: int = 1, nice: int = 10) -> list:
    """The model runs on prepared inputs while the reader prepares the next ones."""
    reader = PrefetchReader(sources, pipe, depth=depth, workers=workers, nice=nice)
    return [pipe.from_inputs(item.inputs, item.samples) for item in reader]


def throughput(fn: Callable[[], list], n_images: int, device: torch.device) -> float:
    """Images per second of one pass (call after a warm-up pass)."""
    from .timing import synchronize

    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return n_images / (time.perf_counter() - t0)


#: The loading comparison's variants (``Profiler.run_loading`` times each over the same stream, interleaved):
#: ``overlapped`` runs the reader at a lower priority, ``overlapped (equal priority)`` does not; ``serial (A/A)`` is
#: ``serial`` again, whose interval is the sweep's noise floor.
LOADING: dict[str, Callable[..., list]] = {
    "serial": lambda pipe, sources, **kw: run_serial(pipe, sources),
    aa_of("serial"): lambda pipe, sources, **kw: run_serial(pipe, sources),  # the noise floor
    "overlapped": run_overlapped,
    "overlapped (equal priority)": lambda pipe, sources, **kw: run_overlapped(pipe, sources, nice=0, **kw),
}


def overlap_bound(stages: Mapping[str, float]) -> float:
    """The most overlapped loading can win, from a serial profile (ms per stage): 1 / (1 - loading / total).

    Loading is ``load + preprocess + data_preprocessor``; the bound assumes loading gets a core of its own.
    """
    from . import stages as S

    loading = sum(stages[s] for s in (S.LOAD, S.PREPROCESS, S.DATA_PREPROCESSOR))
    return 1 / (1 - loading / stages[S.TOTAL])


#: ``loading_summary``'s columns for the bound and the two speed-ups over ``serial``.



