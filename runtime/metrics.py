"""Prometheus text-format metrics for serve-model: counters, gauges and histograms kept in
process, rendered on demand (exposition format 0.0.4)."""
from __future__ import annotations

import bisect
import resource
import threading

# seconds: from a 1 ms graph call up to a 10 minute job
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def _labels(labels: dict, extra: str = "") -> str:
    def escape(value) -> str:
        return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    parts = [f'{k}="{escape(v)}"' for k, v in sorted(labels.items())]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def rss_bytes() -> tuple[int, int]:
    """(current, peak) resident set size of this process."""
    current = peak = 0
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    current = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
    except OSError:
        pass
    if not peak:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return current, peak


class Metrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.counters: dict[str, dict[tuple, float]] = {}
        self.histograms: dict[str, dict[tuple, list]] = {}  # name -> labels -> [bucket counts..., sum, count]
        self.help: dict[str, tuple[str, str]] = {}

    def describe(self, name: str, kind: str, text: str):
        self.help[name] = (kind, text)

    def inc(self, name: str, labels: dict | None = None, value: float = 1.0):
        key = tuple(sorted((labels or {}).items()))
        with self.lock:
            series = self.counters.setdefault(name, {})
            series[key] = series.get(key, 0.0) + value

    def observe(self, name: str, value: float, labels: dict | None = None):
        key = tuple(sorted((labels or {}).items()))
        with self.lock:
            series = self.histograms.setdefault(name, {})
            cell = series.setdefault(key, [0] * len(BUCKETS) + [0.0, 0])
            index = bisect.bisect_left(BUCKETS, value)
            if index < len(BUCKETS):
                cell[index] += 1
            cell[-2] += value
            cell[-1] += 1

    def render(self, gauges: list[tuple[str, str, dict, float]]) -> str:
        """``gauges``: (name, help, labels, value) read at scrape time."""
        lines = []
        seen = set()
        for name, text, labels, value in gauges:
            if name not in seen:
                lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge"]
                seen.add(name)
            lines.append(f"{name}{_labels(labels)} {value:g}")
        with self.lock:
            for name, series in sorted(self.counters.items()):
                kind, text = self.help.get(name, ("counter", name))
                lines += [f"# HELP {name} {text}", f"# TYPE {name} counter"]
                for key, value in sorted(series.items()):
                    lines.append(f"{name}{_labels(dict(key))} {value:g}")
            for name, series in sorted(self.histograms.items()):
                kind, text = self.help.get(name, ("histogram", name))
                lines += [f"# HELP {name} {text}", f"# TYPE {name} histogram"]
                for key, cell in sorted(series.items()):
                    labels = dict(key)
                    running = 0
                    for bound, count in zip(BUCKETS, cell):
                        running += count
                        le = 'le="%g"' % bound
                        lines.append(f"{name}_bucket{_labels(labels, le)} {running}")
                    inf = 'le="+Inf"'
                    lines.append(f"{name}_bucket{_labels(labels, inf)} {cell[-1]}")
                    lines.append(f"{name}_sum{_labels(labels)} {cell[-2]:.6f}")
                    lines.append(f"{name}_count{_labels(labels)} {cell[-1]}")
        current, peak = rss_bytes()
        lines += [
            "# HELP process_resident_memory_bytes Resident memory size in bytes.",
            "# TYPE process_resident_memory_bytes gauge",
            f"process_resident_memory_bytes {current}",
            "# HELP video_aot_peak_rss_bytes Peak resident memory size of the server process in bytes.",
            "# TYPE video_aot_peak_rss_bytes gauge",
            f"video_aot_peak_rss_bytes {peak}",
        ]
        return "\n".join(lines) + "\n"
