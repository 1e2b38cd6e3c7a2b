"""Where the memory of a compiled MindSpore graph goes (issue 15): one synthetic network with a known
weight size, run in several ways, each in its own process, with VmRSS / VmHWM read from
/proc/self/status at every step. Nothing is downloaded; the weights are seeded random numbers.

    python -m benchmarks.memory_probe --work /tmp/memprobe --kind dense --mb 768 [--variants a,b] [--size big]

``--kind dense``: a stack of 4096x4096 Dense layers with ReLU on [T, 4096] tokens (T = 64 small, 2048 big);
``--kind conv``: a stack of 1280->1280 3x3 convolutions with ReLU on [1, 1280, S, S] (S = 16 small, 64 big).
Prints one table row per variant: RSS after each step and the peak, in MB, and peak / weight bytes.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DENSE_WIDTH = 4096
CONV_CH = 1280
SIZES = {"dense": {"small": 64, "big": 2048}, "conv": {"small": 16, "big": 64}}


def rss_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MB."""
    values = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, kb = line.split()[:2]
                values[key[:-1]] = int(kb) / 1024
    return values["VmRSS"], values["VmHWM"]


def layer_bytes(kind: str) -> int:
    return 4 * (DENSE_WIDTH * DENSE_WIDTH if kind == "dense" else CONV_CH * CONV_CH * 9)


def n_layers(kind: str, mb: float) -> int:
    return max(1, int(round(mb * 2 ** 20 / layer_bytes(kind))))


def build(kind: str, mb: float, weight_dtype: str = "fp32", seed: int = 0):
    """The network, with seeded random weights (random so that every page is really touched). With
    ``weight_dtype="fp16"`` the parameters are stored in fp16 and cast to fp32 inside the graph."""
    import mindspore as ms
    from mindspore import nn, ops

    layers = n_layers(kind, mb)
    rng = np.random.default_rng(seed)
    np_dtype = np.float16 if weight_dtype == "fp16" else np.float32

    class Stack(nn.Cell):
        def __init__(self):
            super().__init__()
            params = []
            for i in range(layers):
                if kind == "dense":
                    w = rng.standard_normal((DENSE_WIDTH, DENSE_WIDTH), dtype=np.float32) / DENSE_WIDTH ** 0.5
                else:
                    w = rng.standard_normal((CONV_CH, CONV_CH, 3, 3), dtype=np.float32) / (9 * CONV_CH) ** 0.5
                params.append(ms.Parameter(ms.Tensor(w.astype(np_dtype)), name=f"w{i}"))
            self.weights = ms.ParameterTuple(params)
            self.cast_weights = weight_dtype != "fp32"

        def construct(self, x):
            for w in self.weights:
                if self.cast_weights:
                    w = ops.cast(w, ms.float32)
                if kind == "dense":
                    x = ops.relu(ops.matmul(x, w))  # x: [T, 4096]
                else:
                    x = ops.relu(ops.conv2d(x, w, padding=1, pad_mode="pad"))  # x: [1, C, S, S]
            return x

    return Stack()


def example_input(kind: str, size: str):
    n = SIZES[kind][size]
    shape = (n, DENSE_WIDTH) if kind == "dense" else (1, CONV_CH, n, n)
    return np.random.default_rng(1).standard_normal(shape, dtype=np.float32)


# ---------------------------------------------------------------- preparing the artifacts (own process)

def prepare(work: Path, kind: str, mb: float):
    """Checkpoint, single-file MindIR, split MindIR (graph + variables) and an fp16-weight MindIR."""
    import mindspore as ms
    from mindspore.train import serialization

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    work.mkdir(parents=True, exist_ok=True)
    x = ms.Tensor(example_input(kind, "small"))
    net = build(kind, mb)
    ms.save_checkpoint(net, str(work / "net.ckpt"))
    ms.export(net, x, file_name=str(work / "single"), file_format="MINDIR")
    saved = serialization.TOTAL_SAVE
    serialization.TOTAL_SAVE = 0  # force MindSpore's >1 GB layout: split_graph.mindir + split_variables/
    try:
        ms.export(net, x, file_name=str(work / "split"), file_format="MINDIR")
    finally:
        serialization.TOTAL_SAVE = saved
    del net
    gc.collect()
    net16 = build(kind, mb, "fp16")
    ms.export(net16, x, file_name=str(work / "fp16w"), file_format="MINDIR")


# ---------------------------------------------------------------- the variants (one process each)

VARIANTS = {
    "floor": "import mindspore, GRAPH_MODE context, a 1-layer 64x64 Dense network called once",
    "mindir": "ms.load(single .mindir) + nn.GraphCell (the runtime's path)",
    "mindir_split": "ms.load(split_graph.mindir, weights in split_variables/) + GraphCell",
    "mindir_params_init": "ms.load(single) + GraphCell(params_init=checkpoint tensors)",
    "python": "the network built in Python, GRAPH_MODE, weights from the checkpoint (load_param_into_net)",
    "python_noinit": "the network built in Python with its own random weights, GRAPH_MODE, no checkpoint",
    "mindir_fp16w": "ms.load(fp16-weight MindIR, cast to fp32 in the graph) + GraphCell",
    "mindir_mem_o1": "mindir with ms.runtime.set_memory(optimize_level='O1')",
    "mindir_jit_o0": "mindir with jit_config jit_level O0",
    "mindir_jit_o1": "mindir with jit_config jit_level O1",
    "mindir_jit_o2": "mindir with jit_config jit_level O2",
    "mindir_pool_small": "mindir with ms.runtime.set_memory(init_size='1GB', increase_size='1GB')",
    "mindir_drop_host": "mindir, then every graph parameter's host value replaced by a 1-element tensor after compile",
    "mindir_infer_boost": "mindir with ms.set_context(jit_config={'infer_boost': 'on'})",
}


def child(variant: str, work: Path, kind: str, mb: float, size: str, calls: int = 2) -> dict:
    marks = []

    def mark(name):
        gc.collect()
        rss, hwm = rss_mb()
        marks.append((name, round(rss), round(hwm)))

    mark("start")
    import mindspore as ms
    from mindspore import nn

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    if variant == "mindir_mem_o1":
        ms.runtime.set_memory(optimize_level="O1")
    if variant == "mindir_pool_small":
        ms.runtime.set_memory(init_size="1GB", increase_size="1GB")
    if variant.startswith("mindir_jit_o"):
        ms.set_context(jit_config={"jit_level": "O" + variant[-1]})
    if variant == "mindir_infer_boost":
        ms.set_context(jit_config={"infer_boost": "on"})
    mark("import")
    x = ms.Tensor(example_input(kind, size))
    if variant == "floor":
        cell = nn.Dense(64, 64)
        x = ms.Tensor(np.ones((4, 64), np.float32))
    elif variant in ("python", "python_noinit"):
        cell = build(kind, mb, seed=5)
        mark("built")
        if variant == "python":
            ms.load_param_into_net(cell, ms.load_checkpoint(str(work / "net.ckpt")), strict_load=True)
            mark("ckpt loaded")
    else:
        file = {"mindir_split": "split_graph.mindir", "mindir_fp16w": "fp16w.mindir"}.get(variant, "single.mindir")
        graph = ms.load(str(work / file))
        mark("ms.load")
        params_init = None
        if variant == "mindir_params_init":
            params_init = {k.split(":")[-1]: v for k, v in ms.load_checkpoint(str(work / "net.ckpt")).items()}
        cell = nn.GraphCell(graph, params_init=params_init)
        del graph, params_init
        mark("GraphCell")
    out = None
    seconds = []
    for i in range(calls):
        start = time.perf_counter()
        out = cell(x).asnumpy()
        seconds.append(time.perf_counter() - start)
        mark(f"call {i + 1}")
        if i == 0 and variant == "mindir_drop_host":
            for p in cell.get_parameters():
                p.set_data(ms.Tensor(np.zeros((1,) * p.ndim, np.float32)), slice_shape=True)
            mark("host dropped")
    checksum = float(np.abs(out).sum())
    del out
    gc.collect()
    mark("gc")
    return {"variant": variant, "kind": kind, "size": size, "marks": marks, "seconds": seconds,
            "checksum": checksum, "weight_mb": round(n_layers(kind, mb) * layer_bytes(kind) / 2 ** 20)}


def export_child(export_dir: Path, backend_name: str = "mindspore", order: str = "load_all", graphs_only=None,
                 context=None, memory=None, calls: int = 1, backend_options=None) -> dict:
    """Every graph of an export through the runtime's backend, called once with random inputs of its
    declared shapes; ``order="load_all"`` loads every graph first (as the pipelines do), ``"one_by_one"``
    loads and calls each in turn."""
    marks = []

    def mark(name):
        gc.collect()
        rss, hwm = rss_mb()
        marks.append((name, round(rss), round(hwm)))

    mark("start")
    from video_aot.runtime.backends import make_backend
    from video_aot.runtime.manifest import read_manifest

    backend = make_backend(backend_name, **(backend_options or {}))
    import mindspore as ms

    if context:
        ms.set_context(**context)
    if memory:
        ms.runtime.set_memory(**memory)
    mark("import")
    manifest = read_manifest(export_dir)
    rng = np.random.default_rng(0)
    graphs, seconds, checksum = {}, [], 0.0
    names = [n for n in manifest.graph_entries if not graphs_only or n in graphs_only]
    plan = [(n, "load") for n in names] + [(n, "call") for n in names] if order == "load_all" else \
        [(n, step) for n in names for step in ("load", "call")]
    plan = [(n, s) for n, s in plan if s == "load"] + [(n, s) for _ in range(calls) for n, s in plan if s == "call"] \
        if order == "load_all" else plan
    for name, step in plan:
        entry = manifest.graph_entries[name]
        if step == "load":
            graphs[name] = backend.load(export_dir / entry.file)
            mark(f"load {name}")
        else:
            arrays = [rng.standard_normal(t.shape).astype(t.dtype) for t in entry.inputs]
            start = time.perf_counter()
            outs = graphs[name](*arrays)
            checksum += float(sum(np.abs(o.astype(np.float64)).sum() for o in outs))
            seconds.append(time.perf_counter() - start)
            mark(f"call {name}")
    weights = sum((export_dir / rel).stat().st_size for n, e in manifest.graph_entries.items() if n in names
                  for rel in e.files)
    return {"variant": f"export:{backend_name}:{order}", "marks": marks, "seconds": seconds, "checksum": checksum,
            "weight_mb": round(weights / 2 ** 20)}


def run_child(variant, args) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.memory_probe", "--child", variant, "--work", str(args.work.parent),
           "--kind", args.kind, "--mb", str(args.mb), "--size", args.size]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"variant": variant, "error": (proc.stderr or proc.stdout).strip().splitlines()[-3:]}
    return json.loads(lines[-1])


def show(result: dict):
    if "error" in result:
        print(f"{result['variant']:22s} FAILED: {' | '.join(result['error'])}", flush=True)
        return
    marks = result["marks"]
    peak = max(m[2] for m in marks)
    base = dict((m[0], m[1]) for m in marks)["import"]
    steps = "  ".join(f"{name}={rss}" for name, rss, _ in marks)
    w = result["weight_mb"]
    print(f"{result['variant']:22s} w={w} MB  peak={peak}  steady={marks[-1][1]}  "
          f"(peak-import)/w={(peak - base) / w:.2f}  (steady-import)/w={(marks[-1][1] - base) / w:.2f}  "
          f"t={['%.2f' % s for s in result['seconds']]}  sum={result['checksum']:.6g}\n    {steps}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/memory_probe"))
    parser.add_argument("--kind", choices=("dense", "conv"), default="dense")
    parser.add_argument("--mb", type=float, default=768)
    parser.add_argument("--size", choices=("small", "big"), default="small")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--export", type=Path, help="measure this export folder's graphs instead")
    parser.add_argument("--backend", default="mindspore")
    parser.add_argument("--order", choices=("load_all", "one_by_one"), default="load_all")
    parser.add_argument("--graphs", help="only these graphs of the export (comma-separated)")
    parser.add_argument("--context", help="JSON keyword arguments for ms.set_context in the measured process")
    parser.add_argument("--memory", help="JSON keyword arguments for ms.runtime.set_memory")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the measured process")
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--backend-options", help="JSON keyword arguments for make_backend")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.export:
        if args.child:
            print(json.dumps(export_child(args.export.resolve(), args.backend, args.order,
                                          args.graphs.split(",") if args.graphs else None,
                                          json.loads(args.context or "{}"), json.loads(args.memory or "{}"),
                                          args.calls, json.loads(args.backend_options or "{}"))), flush=True)
            return
        cmd = [sys.executable, "-m", "benchmarks.memory_probe", "--child", "export", "--export", str(args.export),
               "--backend", args.backend, "--order", args.order, "--graphs", args.graphs or "",
               "--context", args.context or "", "--memory", args.memory or "", "--calls", str(args.calls),
               "--backend-options", args.backend_options or ""]
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ, **dict(kv.split("=", 1) for kv in args.env))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        # the measured process runs in the caller's folder: graph-kernel fusion writes its AKG files there
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        show(json.loads(lines[-1]) if lines else {"variant": "export", "error": proc.stderr.splitlines()[-3:]})
        return
    work = args.work / f"{args.kind}_{int(args.mb)}"
    args.work = work
    if args.prepare_only:
        prepare(work, args.kind, args.mb)
        return
    if args.child:
        print(json.dumps(child(args.child, work, args.kind, args.mb, args.size)), flush=True)
        return
    if not (work / "split_graph.mindir").is_file():
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "benchmarks.memory_probe", "--prepare-only", "--work",
                        str(args.work.parent), "--kind", args.kind, "--mb", str(args.mb)], check=True,
                       cwd=Path(__file__).resolve().parents[1])
        print(f"prepared {work} in {time.perf_counter() - start:.0f} s", flush=True)
    for variant in args.variants.split(","):
        show(run_child(variant, args))


if __name__ == "__main__":
    main()
