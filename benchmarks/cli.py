"""bench-model: latency and memory of every stage of an export, against MindSpore PyNative and
torch eager measured in the same run, with a history and a regression gate.

  bench-model EXPORT_DIR                      benchmark an existing export
  bench-model --model svd-xt --tier small     generate the tier's snapshot, export it, benchmark it
  bench-model --compare BASELINE.json --threshold 0.10 [--record RUN.json]
                                              gate a run (this one, RUN.json, or the newest in the history)
  bench-model --plot [--plot-out history.png] chart the history

Each backend runs in a process of its own, one after the other (exported, PyNative, torch), so
that each peak memory figure is that backend's own and multi-GB models never coexist. With
``--rounds N`` the exported and torch processes run N times in turn (PyNative once): each round's
ratio compares two runs minutes apart, and the quoted ratio is the median over rounds.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import report
from .measure import RssSampler
from .tiers import TIERS, get_tier, tier_shapes


MB = 1024 * 1024


def _work_root() -> Path:
    from video_aot.export.tiny import cache_home

    return cache_home() / "bench"


def run_worker(kind: str, config: dict, log=print) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as tmp:
        cfg, out = Path(tmp) / "config.json", Path(tmp) / "out.json"
        cfg.write_text(json.dumps(config))
        log(f"[bench] {kind} ...")
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "video_aot.benchmarks.worker", kind, str(cfg), str(out)],
                                stdout=sys.stderr, stderr=sys.stderr)
        with RssSampler(0.01, pid=proc.pid) as sampler:  # sampled from here: no thread inside the worker
            code = proc.wait()
        if code != 0 or not out.is_file():
            raise RuntimeError(f"benchmark worker {kind!r} failed (exit {code}); see the output above")
        log(f"[bench] {kind} done in {time.perf_counter() - start:.1f}s")
        result = json.loads(out.read_text())
        intervals = result.pop("intervals", {})
        result["peak_rss_mb"] = {stage: round((sampler.peak(v) or 0) / MB, 1) for stage, v in intervals.items()}
        return result


def torch_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "diffusers"))


def run_benchmark(args, log=print) -> dict:
    settings_tier = get_tier(args.tier)
    steps = args.steps or settings_tier.steps
    warmup = settings_tier.warmup if args.warmup is None else args.warmup
    repeats = args.repeats or settings_tier.repeats
    export_info = None
    if args.export_dir:
        export_dir = Path(args.export_dir).resolve()
        model = None
    else:
        model = args.model
        shapes = tier_shapes(settings_tier, model)
        if args.shapes:
            shapes.update(parse_shapes(args.shapes, model))
        export_dir = (Path(args.work_dir) if args.work_dir else _work_root() / f"{model}-{args.tier}") / "export"
        config = {"model": settings_tier.snapshot.format(model=model), "export_dir": str(export_dir),
                  "force": not args.reuse_export, **shapes,
                  "onnx": "onnxruntime" in args.baselines.split(",")}  # the onnxruntime baseline runs its ONNX files
        export_info = run_worker("export", config, log)
    manifest = json.loads((export_dir / "manifest.json").read_text())
    if model is None:  # an export folder: name it after its source (a preset name, or a snapshot folder's name)
        source = str(manifest.get("source", {}).get("model") or "export")
        model = Path(source).name if ("/" in source or "\\" in source) else source
    if export_info is None:  # an existing export: its compile times are in the manifest
        graphs = {name: g.get("export_seconds") for name, g in manifest["graphs"].items()}
        export_info = {"seconds": sum(v for v in graphs.values() if v), "graphs": graphs, "peak_rss_mb": None,
                       "from_manifest": True}
    compile_cache = str(Path(args.work_dir or export_dir.parent) / "compile_cache")
    common = {"export_dir": str(export_dir), "steps": steps, "warmup": warmup, "repeats": repeats,
              "compile_cache": compile_cache}
    graph_kernel = settings_tier.graph_kernel if args.graph_kernel is None else args.graph_kernel
    backend_options = {"graph_kernel": graph_kernel}
    rounds = args.rounds or settings_tier.rounds
    if rounds < 1:
        raise ValueError(f"--rounds must be at least 1, got {rounds}")
    baselines = [b for b in args.baselines.split(",") if b]
    errors = {}
    runs = {"exported": []}
    for i in range(rounds):
        runs["exported"].append(run_worker("exported", {**common, "backend_options": backend_options}, log))
        for kind in baselines:
            if kind in errors or (kind == "pynative" and i > 0):  # PyNative is 5-10x slower: one round
                continue
            if kind == "torch" and not torch_available():
                errors[kind] = "torch or diffusers is not installed"
                log(f"[bench] skipping the torch baseline: {errors[kind]}")
                continue
            try:
                runs.setdefault(kind, []).append(run_worker(kind, common, log))
            except RuntimeError as err:
                errors[kind] = str(err)
                log(f"[bench] {err}")
    results = {kind: report.pool_rounds(rs) for kind, rs in runs.items() if rs}
    settings = {"steps": steps, "warmup": warmup, "repeats": repeats, "rounds": rounds, "baselines": baselines,
                "baseline_errors": errors, "backend": "mindspore", "backend_options": backend_options,
                "export_dir": str(export_dir), "shapes_override": getattr(args, "shapes", None),
                "isolation": "one process per backend, run one after the other; with rounds > 1 the exported "
                             "and torch processes alternate and each ratio is the median of the per-round ratios"}
    record = report.build_record(settings_tier, model, manifest, settings, results, export_info)
    if not args.export_dir:
        from video_aot.export.tiny import tiny_models

        TINY = tiny_models()

        note = TINY.get(settings_tier.snapshot.format(model=model), {}).get("note")
        if note:
            record["tier_changes"] = note
    return record


SHAPE_KEYS = ("frames", "height", "width", "decode_chunk_size", "batch")


def parse_shapes(text: str, model: str) -> dict:
    """``--shapes``: another tier's name (its shapes for this model) or ``KEY=INT,...`` over SHAPE_KEYS."""
    if text in TIERS:
        return tier_shapes(TIERS[text], model)
    shapes = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in SHAPE_KEYS or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"--shapes takes a tier name ({', '.join(sorted(TIERS))}) or KEY=INT,... with KEY "
                             f"one of {', '.join(SHAPE_KEYS)}; got {item!r}")
        shapes[key] = int(value)
    return shapes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench-model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", nargs="?", help="an export folder written by export-model")
    parser.add_argument("--model", help="build the export first from this preset (e.g. svd-xt) at --tier")
    parser.add_argument("--tier", default=None, choices=sorted(TIERS),
                        help="tiny (test configs, CI smoke run), small (real architecture, reduced shape), "
                             "full (real shape; slow). Default: small with --model; labels EXPORT_DIR runs.")
    parser.add_argument("--shapes", default=None,
                        help="with --model: the static shapes of another tier (e.g. --tier full --shapes small: the "
                             "full architecture at the small tier's shape) or KEY=INT,... (frames, height, width, "
                             "decode_chunk_size, batch) over the tier's")
    parser.add_argument("--baselines", default="pynative,torch",
                        help="comma-separated baselines measured in the same run (default pynative,torch; '' for none); "
                             "onnxruntime runs the export's ONNX files (with --model the export is made with --onnx)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per generation")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up generations (first-call figures)")
    parser.add_argument("--repeats", type=int, default=None, help="measured generations")
    parser.add_argument("--rounds", type=int, default=None,
                        help="run the exported and torch processes this many times in turn (default: the tier's); "
                             "ratios are the median of the per-round ratios, times are pooled")
    parser.add_argument("--graph-kernel", dest="graph_kernel", action="store_true", default=None,
                        help="compile the exported graphs with graph-kernel fusion (default: the tier's choice)")
    parser.add_argument("--no-graph-kernel", dest="graph_kernel", action="store_false")
    parser.add_argument("--reuse-export", action="store_true",
                        help="with --model: keep a still-valid export instead of re-exporting (export time is then "
                             "read from its manifest)")
    parser.add_argument("--work-dir", help="where --model exports go (default $VIDEO_AOT_HOME/bench/MODEL-TIER)")
    parser.add_argument("--history-dir", default=str(report.HISTORY_DIR), help="history folder")
    parser.add_argument("--no-history", action="store_true", help="do not append the record to the history")
    parser.add_argument("--out", help="also write the record to this file")
    parser.add_argument("--record", help="with --compare: gate this record instead of running")
    parser.add_argument("--compare", metavar="BASELINE.json", help="gate against this baseline record")
    parser.add_argument("--threshold", type=float, default=0.10,
                        help="relative worsening of a ratio or peak memory that fails the gate (default 0.10)")
    parser.add_argument("--plot", action="store_true", help="render the history chart")
    parser.add_argument("--plot-out", default=None, help="PNG path (default HISTORY_DIR/history.png)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.export_dir and args.model:
        parser.error("pass either EXPORT_DIR or --model, not both")
    if args.shapes and not args.model:
        parser.error("--shapes goes with --model (an existing export's shapes are fixed)")
    if args.tier is None:
        args.tier = "small"
    if not 0 <= args.threshold < 10:
        parser.error(f"--threshold must be a fraction such as 0.10, got {args.threshold}")
    record = None
    try:
        if args.export_dir or args.model:
            if args.export_dir and not (Path(args.export_dir) / "manifest.json").is_file():
                raise ValueError(f"{args.export_dir} is not an export (no manifest.json); run export-model first "
                                 "or pass --model NAME --tier TIER")
            record = run_benchmark(args, log=lambda *a: print(*a, file=sys.stderr))
            problems = report.validate_record(record)
            if problems:
                print("bench-model: warning: incomplete record: " + "; ".join(problems), file=sys.stderr)
            print(report.format_table(record))
            if not args.no_history:
                print(f"record: {report.write_history(record, Path(args.history_dir))}")
            if args.out:
                Path(args.out).write_text(json.dumps(record, indent=1))
        elif args.record:
            record = json.loads(Path(args.record).read_text())
        elif args.compare:
            history = report.load_history(Path(args.history_dir))
            if not history:
                raise ValueError(f"nothing to compare: no run given and no records in {args.history_dir}")
            baseline_tier = json.loads(Path(args.compare).read_text()).get("tier")
            same = [r for r in history if r.get("tier") == baseline_tier] or history
            record = same[-1]
            print(f"comparing the newest {baseline_tier} record: {record['_path']}")
        if args.plot:
            records = report.load_history(Path(args.history_dir))
            from .plot import plot_history

            out = Path(args.plot_out) if args.plot_out else Path(args.history_dir) / "history.png"
            print(f"chart: {plot_history(records, out)}")
        if args.compare:
            baseline = json.loads(Path(args.compare).read_text())
            lines, failures = report.compare(record, baseline, args.threshold)
            print("\n".join(lines))
            if failures:
                print(f"bench-model: {len(failures)} figure(s) worse than {args.compare} by more than "
                      f"{args.threshold:.0%}:\n  " + "\n  ".join(failures), file=sys.stderr)
                return 1
            print(f"gate passed: no ratio or peak memory worse than the baseline by more than {args.threshold:.0%}")
        elif record is None and not args.plot:
            parser.error("nothing to do: pass EXPORT_DIR, --model, --compare or --plot")
    except (ValueError, RuntimeError, OSError) as err:
        print(f"bench-model: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
