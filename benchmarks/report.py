"""The benchmark record: one JSON document per run (machine, versions, commit, tier, shapes and
every figure), the printed table, the regression gate and the history folder."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import statistics
import subprocess
from pathlib import Path

SCHEMA = 1
HISTORY_DIR = Path(__file__).parent / "history"
BASELINE_DIR = Path(__file__).parent / "baselines"
BACKENDS = ("exported", "pynative", "torch", "onnxruntime")
BASELINES = BACKENDS[1:]
# stages in the order they run; "unet" is the graph call inside "denoise_step"
STAGES = ("image_encode", "text_encode", "vae_encode", "denoise_step", "unet", "vae_decode", "end_to_end")
# the git checkout the record names; VIDEO_AOT_REPO overrides it when bench-model runs from a frozen copy
# of the sources (MindSpore re-reads a cell's source file when it compiles, so edits made during a run
# break the export: NOTES.md)
REPO = Path(os.environ.get("VIDEO_AOT_REPO") or Path(__file__).resolve().parent.parent)


# ----------------------------------------------------------------------------- environment
def git_info() -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD")
    return {"commit": commit or None, "short": commit[:8] if commit else None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")), "branch": git("branch", "--show-current")}


def package_versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("video-aot", "mindspore", "numpy", "torch", "diffusers", "transformers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine_info() -> dict:
    cpu, flags = platform.processor() or None, []
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and cpu in (None, "", "x86_64"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as fh:
            mem = round(int(fh.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if f in flags]
    return {"cpu_model": cpu, "cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity") else None, "mem_total_gb": mem, "simd": simd,
            "platform": platform.platform(), "hostname": platform.node()}


# ----------------------------------------------------------------------------- the record
def _ratio(a, b):
    return None if a is None or not b else a / b


def pool_rounds(runs: list[dict]) -> dict:
    """One backend's worker results over one or more rounds -> one result: stage figures from the
    pooled samples, each round's stage medians kept (``round_medians``) for the per-round ratios,
    peaks as the maximum, load time as the median; first-call figures and FLOP counts from the
    first round."""
    from .measure import step_overhead, summary

    out = dict(runs[0])
    stages = [s for s in runs[0]["stages"] if all(s in r.get("samples", {}) for r in runs)]
    pooled = {s: [v for r in runs for v in r["samples"][s]] for s in stages}
    out["samples"] = pooled
    out["stages"] = {s: summary(v) for s, v in pooled.items()}
    out["round_medians"] = {s: [r["stages"][s]["median"] for r in runs] for s in stages}
    out.update(step_overhead(pooled.get("denoise_step", []), pooled.get("unet", [])))
    loads = [r["load_seconds"] for r in runs if r.get("load_seconds") is not None]
    if loads:
        out["load_seconds"] = summary(loads)["median"]
    for key in ("process_peak_rss_mb", "matmul_gflops"):
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            out[key] = max(values)
    out["peak_rss_mb"] = {s: max((r.get("peak_rss_mb") or {}).get(s) or 0 for r in runs)
                          for s in runs[0].get("peak_rss_mb", {})}
    out["rounds"] = len(runs)
    return out


def build_record(tier, model: str, manifest: dict, settings: dict, results: dict, export: dict | None) -> dict:
    """One run's record from the workers' results (kind -> dict)."""
    exported = results["exported"]
    peaks = {k: r.get("matmul_gflops") for k, r in (("mindspore", exported), ("torch", results.get("torch", {})))}
    peak = max([v for v in peaks.values() if v] or [None]) if any(peaks.values()) else None
    flops = results.get("pynative", {}).get("flops", {})
    stages = {}
    for stage in STAGES:
        if stage not in exported["stages"]:
            continue
        entry = {}
        for kind in BACKENDS:
            if kind in results and stage in results[kind]["stages"]:
                entry[kind] = results[kind]["stages"][stage]
        median = entry["exported"]["median"]
        for kind in BASELINES:
            if kind in entry:
                if kind == "onnxruntime":  # a second runtime backend: its memory is worth comparing too
                    entry["onnxruntime_peak_rss_mb"] = results[kind].get("peak_rss_mb", {}).get(stage)
                entry[f"ratio_{kind}"] = _ratio(median, entry[kind]["median"])
                mine = exported.get("round_medians", {}).get(stage, [])
                theirs = results[kind].get("round_medians", {}).get(stage, [])
                if len(mine) > 1 and len(mine) == len(theirs):
                    # exported and this baseline alternated: each round's ratio compares runs minutes
                    # apart, so the median of those is less exposed to a shared machine's load swings
                    per_round = [_ratio(a, b) for a, b in zip(mine, theirs)]
                    entry[f"{kind}_ratio_per_round"] = per_round
                    entry[f"ratio_{kind}"] = statistics.median(per_round)
                # the fastest calls are the least disturbed by other load on a shared machine
                entry[f"ratio_{kind}_min"] = _ratio(entry["exported"]["min"], entry[kind]["min"])
        entry["peak_rss_mb"] = exported["peak_rss_mb"].get(stage)
        if stage in flops:
            entry["flops"] = flops[stage]
            entry["gflops_per_s"] = flops[stage] / median / 1e9 if median else None
            entry["fraction_of_peak"] = _ratio(entry["gflops_per_s"], peak)
        stages[stage] = entry
    cold = {kind: {"load_seconds": r.get("load_seconds"), "first_call": r.get("first_call", {}),
                   "process_peak_rss_mb": r.get("process_peak_rss_mb")} for kind, r in results.items()}
    cold["exported"]["verify_seconds"] = exported.get("verify_seconds")
    load_ratios = {f"ratio_{k}": _ratio(exported.get("load_seconds"), results[k].get("load_seconds"))
                   for k in BASELINES if k in results}
    process_peaks = [r.get("process_peak_rss_mb") for r in results.values()] + [(export or {}).get("peak_rss_mb")]
    return {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_info(),
        "versions": package_versions(),
        "machine": machine_info(),
        "tier": tier.name,
        "tier_description": tier.description,
        "model": model,
        "family": manifest["family"],
        "pipeline": manifest["pipeline"],
        "dtype": manifest.get("dtype", "fp32"),
        "shapes": {**manifest["shapes"], "latent_shape": manifest.get("latent_shape")},
        "settings": settings,
        "export": export,
        "matmul_peak_gflops": {**peaks, "peak": peak, "n": 1024},
        "stages": stages,
        "overhead_pct": exported.get("overhead_pct"),
        "overhead_ms": exported.get("overhead_ms"),
        "cold_start": {**cold, **load_ratios},
        "peak_rss_mb": {
            "exported_stages": exported["peak_rss_mb"],
            "exported_process": exported.get("process_peak_rss_mb"),
            "run": max([p for p in process_peaks if p] or [None]),
            **{f"{k}_process": r.get("process_peak_rss_mb") for k, r in results.items() if k != "exported"},
        },
    }


REQUIRED = ("schema", "created", "git", "versions", "machine", "tier", "shapes", "settings", "stages",
            "matmul_peak_gflops", "overhead_pct", "cold_start", "peak_rss_mb", "export")


def validate_record(record: dict) -> list[str]:
    """What is missing from a record (empty when complete)."""
    problems = [f"missing {key!r}" for key in REQUIRED if key not in record]
    for stage in ("denoise_step", "unet", "vae_decode", "end_to_end"):
        entry = record.get("stages", {}).get(stage)
        if entry is None:
            problems.append(f"stage {stage!r} missing")
            continue
        for key in ("exported", "peak_rss_mb"):
            if entry.get(key) is None:
                problems.append(f"stage {stage}: {key} missing")
    return problems


def write_history(record: dict, folder: Path = HISTORY_DIR) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = record["created"].replace(":", "").replace("-", "").replace("+0000", "Z")
    model = re.sub(r"[^A-Za-z0-9._-]+", "-", str(record["model"]))
    name = f"{stamp}_{model}_{record['tier']}_{record['git']['short'] or 'nogit'}.json"
    tmp = folder / (name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, folder / name)
    return folder / name


def load_history(folder: Path = HISTORY_DIR, tier: str | None = None, model: str | None = None) -> list[dict]:
    records = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except ValueError:
            continue
        if (tier is None or record.get("tier") == tier) and (model is None or record.get("model") == model):
            record["_path"] = str(path)
            records.append(record)
    return sorted(records, key=lambda r: r.get("created", ""))


# ----------------------------------------------------------------------------- printing
def _ms(v):
    return "-" if v is None else (f"{v * 1e3:8.1f}" if v < 10 else f"{v:7.2f}s")


def _x(v):
    return "-" if v is None else f"{v:.2f}x"


def format_table(record: dict) -> str:
    lines = [
        f"bench-model {record['model']} tier={record['tier']} family={record['family']} dtype={record['dtype']} "
        f"shapes={ {k: v for k, v in record['shapes'].items()} }",
        f"commit {record['git']['short']}{' (dirty)' if record['git']['dirty'] else ''}; "
        f"{record['machine']['cpu_model']}, {record['machine']['cores']} cores; "
        f"mindspore {record['versions']['mindspore']}, torch {record['versions']['torch']}",
        "times in ms (median [min-max]) unless marked s; ratios are exported / baseline, measured in this run",
        f"{'stage':14s} {'exported':>24s} {'pynative':>10s} {'torch':>10s} {'/pynative':>10s} {'/torch':>8s} "
        f"{'peakRSS MB':>10s} {'GFLOP':>8s} {'GFLOP/s':>8s} {'%peak':>6s}",
    ]
    for stage, e in record["stages"].items():
        ex = e["exported"]
        cell = f"{_ms(ex['median'])} [{_ms(ex['min']).strip()}-{_ms(ex['max']).strip()}]"
        lines.append(
            f"{stage:14s} {cell:>24s} {_ms((e.get('pynative') or {}).get('median')):>10s} "
            f"{_ms((e.get('torch') or {}).get('median')):>10s} {_x(e.get('ratio_pynative')):>10s} "
            f"{_x(e.get('ratio_torch')):>8s} {e.get('peak_rss_mb') or '-':>10} "
            f"{(e['flops'] / 1e9 if e.get('flops') else 0):8.1f} {e.get('gflops_per_s') or 0:8.1f} "
            f"{100 * (e.get('fraction_of_peak') or 0):5.1f}%")
    rounds = {stage: e["torch_ratio_per_round"] for stage, e in record["stages"].items()
              if e.get("torch_ratio_per_round")}
    if rounds:
        lines.append(f"exported / torch per round ({record['settings'].get('rounds')} rounds; the ratios above are "
                     "their medians): " + "; ".join(f"{s} " + " ".join(_x(r) for r in v) for s, v in rounds.items()))
    oh = record.get("overhead_pct") or {}
    peak = record["matmul_peak_gflops"]
    cold = record["cold_start"]
    lines += [
        f"runtime overhead per step (outside the UNet graph): {oh.get('median', 0) or 0:.3f}% of the step "
        f"({(record.get('overhead_ms') or {}).get('median') or 0:.2f} ms)",
        f"fp32 matmul peak (1024^3): mindspore {peak.get('mindspore') or 0:.0f} GFLOP/s, torch {peak.get('torch') or 0:.0f}"
        f" GFLOP/s; peak used = {peak.get('peak') or 0:.0f}",
        "cold start: " + ", ".join(
            f"{k} load {cold[k]['load_seconds']:.2f}s" for k in BACKENDS if k in cold and cold[k].get("load_seconds"))
        + (f" (exported: checksum verify {cold['exported'].get('verify_seconds', 0):.2f}s of it)"),
        "first call: " + ", ".join(f"{s} {_ms(v).strip()}" for s, v in cold["exported"]["first_call"].items()),
    ]
    if record.get("export"):
        lines.append(f"export (compile + write): {record['export']['seconds']:.1f}s; per graph: " + ", ".join(
            f"{k} {v:.1f}s" for k, v in record["export"]["graphs"].items() if v is not None))
    rss = record["peak_rss_mb"]
    lines.append(f"peak RSS: exported process {rss.get('exported_process')} MB, whole run {rss.get('run')} MB")
    ort = {stage: e for stage, e in record["stages"].items() if e.get("onnxruntime")}
    if ort:  # the same export's ONNX files on onnxruntime (bench-model --baselines ...,onnxruntime)
        lines.append("onnxruntime (the export's ONNX files; exported / onnxruntime, peak RSS MB): " + "; ".join(
            f"{stage} {_ms(e['onnxruntime']['median']).strip()} ({_x(e.get('ratio_onnxruntime')).strip()}, "
            f"{e.get('onnxruntime_peak_rss_mb') or '-'})" for stage, e in ort.items())
            + f"; process peak {rss.get('onnxruntime_process')} MB")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the gate
def gated_figures(record: dict) -> dict:
    """name -> value for every figure the gate checks: lower is better for all of them.
    Ratios (exported / baseline backend, measured in one run) and peak memory; absolute times
    on shared machines are printed, never gated."""
    out = {}
    for stage, e in record.get("stages", {}).items():
        for kind in ("pynative", "torch"):
            if e.get(f"ratio_{kind}") is not None:
                out[f"{stage}/{kind} ratio"] = e[f"ratio_{kind}"]
        if e.get("peak_rss_mb"):
            out[f"{stage} peak RSS MB"] = e["peak_rss_mb"]
    for kind in ("pynative", "torch"):
        if record.get("cold_start", {}).get(f"ratio_{kind}") is not None:
            out[f"load/{kind} ratio"] = record["cold_start"][f"ratio_{kind}"]
    rss = record.get("peak_rss_mb", {})
    if rss.get("exported_process"):
        out["exported process peak RSS MB"] = rss["exported_process"]
    return out


def compare(current: dict, baseline: dict, threshold: float = 0.10) -> tuple[list[str], list[str]]:
    """(lines, failures): each gated figure against the baseline; a figure fails when it is worse
    (higher) than the baseline by more than ``threshold`` (relative)."""
    lines, failures = [], []
    if current.get("tier") != baseline.get("tier") or current.get("shapes") != baseline.get("shapes"):
        lines.append(f"warning: comparing tier {current.get('tier')} {current.get('shapes')} against "
                     f"baseline tier {baseline.get('tier')} {baseline.get('shapes')}")
    cpu, base_cpu = (r.get("machine", {}).get("cpu_model") for r in (current, baseline))
    if cpu != base_cpu:
        lines.append(f"warning: the baseline was measured on {base_cpu!r} and this run on {cpu!r}; the ratios "
                     "depend on the CPU (MindSpore's and torch's kernels differ by machine), so a change here "
                     "may be the machine's. Gate against a baseline from the same machine.")
    cur, base = gated_figures(current), gated_figures(baseline)
    lines.append(f"{'figure':34s} {'baseline':>10s} {'current':>10s} {'change':>8s}  (threshold +{threshold:.0%})")
    for name, value in cur.items():
        if name not in base or not base[name]:
            lines.append(f"{name:34s} {'-':>10s} {value:10.3f}     new")
            continue
        change = value / base[name] - 1.0
        bad = change > threshold
        lines.append(f"{name:34s} {base[name]:10.3f} {value:10.3f} {change:+8.1%}{'  REGRESSION' if bad else ''}")
        if bad:
            failures.append(f"{name}: {base[name]:.3f} -> {value:.3f} ({change:+.1%})")
    for name in sorted(set(base) - set(cur)):
        lines.append(f"{name:34s} {base[name]:10.3f} {'-':>10s}  missing in the current run")
    for stage, e in current.get("stages", {}).items():  # absolute times: information only
        b = baseline.get("stages", {}).get(stage, {}).get("exported", {}).get("median")
        if b:
            lines.append(f"  (info) {stage} exported median {_ms(b).strip()} -> {_ms(e['exported']['median']).strip()}")
    return lines, failures
