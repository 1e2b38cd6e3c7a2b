"""Measuring helpers shared by every backend worker: summary statistics, a resident-memory
sampler, a stage recorder (intervals + durations) and a FLOP counter over MindSpore's matmul
and conv ops. Nothing here knows a model family."""
from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from collections import defaultdict

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def summary(values) -> dict:
    """median / min / max / n of a list of seconds (or any numbers)."""
    values = [float(v) for v in values]
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def step_overhead(steps, unet) -> dict:
    """The runtime's own time per denoising step (the step minus its UNet graph call), as
    ``overhead_pct`` / ``overhead_ms`` summaries; {} when the two lists do not pair up."""
    if not steps or len(steps) != len(unet):
        return {}
    return {"overhead_pct": summary([100.0 * (s - u) / s for s, u in zip(steps, unet)]),
            "overhead_ms": summary([1e3 * (s - u) for s, u in zip(steps, unet)])}


def rss_bytes(pid: int | str = "self") -> int:
    """Current resident set size of a process (this one by default)."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:  # not Linux: fall back to the lifetime peak
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (VmHWM)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssSampler:
    """Samples a process' RSS every ``interval`` seconds in a background thread, so that the
    peak inside any time window (a stage) can be read afterwards. The benchmark samples its
    worker processes from the parent, so that no sampling thread competes for the worker's GIL;
    ``time.perf_counter`` is CLOCK_MONOTONIC on Linux, the same clock in both processes."""

    def __init__(self, interval: float = 0.01, pid: int | str = "self"):
        self.interval = interval
        self.pid = pid
        self.samples = []  # (perf_counter, rss bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.samples.append((time.perf_counter(), rss_bytes(self.pid)))
            except (OSError, IndexError, ValueError):  # the process has exited
                break
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def peak(self, intervals) -> int | None:
        """Max RSS over the samples inside any (start, end) interval; a window too short to hold
        a sample takes the first sample after its end."""
        best = None
        times = [t for t, _ in self.samples]
        import bisect

        for start, end in intervals:
            lo = bisect.bisect_left(times, start)
            hi = bisect.bisect_right(times, end)
            window = [rss for _, rss in self.samples[lo:hi]]
            if not window and lo < len(self.samples):
                window = [self.samples[lo][1]]
            if window:
                best = max(best or 0, max(window))
        return best


class StageRecorder:
    """Durations and (start, end) intervals per stage, with nesting (a denoising step holds
    the UNet call). ``tag`` separates warm-up calls from measured ones."""

    def __init__(self):
        self.durations = defaultdict(list)   # (tag, stage) -> [seconds]
        self.intervals = defaultdict(list)   # stage -> [(start, end)] over every tag
        self.active = []                     # stages open right now, outermost first
        self.tag = "warmup"
        self.listeners = []                  # called with the stage name when a stage call ends

    @contextlib.contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        self.active.append(name)
        try:
            yield
        finally:
            end = time.perf_counter()
            self.active.remove(name)
            self.durations[(self.tag, name)].append(end - start)
            self.intervals[name].append((start, end))
            for listener in self.listeners:
                listener(name)

    def add(self, name: str, start: float, end: float, timed: bool = True):
        if timed:
            self.durations[(self.tag, name)].append(end - start)
        self.intervals[name].append((start, end))

    def stages(self, tag: str) -> dict:
        return {stage: list(v) for (t, stage), v in self.durations.items() if t == tag}


# ----------------------------------------------------------------------------- FLOPs
def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def matmul_flops(a_shape, b_shape, out_shape, transpose_a: bool = False) -> int:
    k = a_shape[-2] if transpose_a and len(a_shape) > 1 else a_shape[-1]
    return 2 * _prod(out_shape) * int(k)


def conv_flops(weight_shape, out_shape) -> int:
    # every output element is a dot product over in_channels/groups * kernel
    return 2 * _prod(out_shape) * _prod(weight_shape[1:])


class FlopCounter:
    """Counts multiply-add FLOPs (2 per MAC) of MindSpore's matmul and conv calls while active,
    by wrapping the functional ops ``mindspore.ops.{matmul, bmm, batch_matmul, conv2d, conv3d,
    dense}`` and the ``MatMul``/``BatchMatMul`` primitives. Works in PyNative mode, where every
    op call goes through Python. Nested calls (a functional op calling its primitive) count once.
    The count is attributed to every stage open in ``recorder`` at that moment."""

    FUNCTIONS = ("matmul", "bmm", "batch_matmul", "conv2d", "conv3d", "dense")

    def __init__(self, recorder: StageRecorder):
        self.recorder = recorder
        self.calls = defaultdict(list)  # stage -> [flops per stage call]
        self._current = defaultdict(int)
        self._depth = 0
        self._saved = []

    def _count(self, kind, args, kwargs, out):
        shape = lambda t: tuple(t.shape)  # noqa: E731
        if kind in ("conv2d", "conv3d"):
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            flops = conv_flops(shape(weight), shape(out))
        elif kind == "dense":
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            flops = 2 * _prod(shape(out)) * shape(weight)[-1]
        else:
            flops = matmul_flops(shape(args[0]), shape(args[1]), shape(out), bool(kwargs.get("transpose_a", False)))
        for stage in set(self.recorder.active):
            self._current[stage] += flops

    def _wrap(self, kind, fn):
        counter = self

        def wrapped(*args, **kwargs):
            counter._depth += 1
            try:
                out = fn(*args, **kwargs)
            finally:
                counter._depth -= 1
            if counter._depth == 0:
                counter._count(kind, args, kwargs, out)
            return out

        return wrapped

    def _wrap_primitive(self, cls):
        counter = self
        original = cls.__call__

        def wrapped(prim, *args):
            counter._depth += 1
            try:
                out = original(prim, *args)
            finally:
                counter._depth -= 1
            if counter._depth == 0:
                ta = bool(getattr(prim, "transpose_a", False))
                flops = matmul_flops(tuple(args[0].shape), tuple(args[1].shape), tuple(out.shape), ta)
                for stage in set(counter.recorder.active):
                    counter._current[stage] += flops
            return out

        return original, wrapped

    def __enter__(self):
        from mindspore import ops
        from mindspore.ops import operations as P

        for name in self.FUNCTIONS:
            fn = getattr(ops, name, None)
            if fn is not None:
                self._saved.append((ops, name, fn))
                setattr(ops, name, self._wrap(name, fn))
        for cls in (P.MatMul, P.BatchMatMul):
            original, wrapped = self._wrap_primitive(cls)
            self._saved.append((cls, "__call__", original))
            cls.__call__ = wrapped
        return self

    def __exit__(self, *exc):
        for owner, name, fn in reversed(self._saved):
            setattr(owner, name, fn)
        self._saved.clear()

    def stage_done(self, stage: str):
        """Close one call of ``stage``: its FLOPs go to the per-call list."""
        self.calls[stage].append(self._current.pop(stage, 0))
