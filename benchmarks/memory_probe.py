"""Where the memory of a compiled MindSpore graph goes (issue 15): one synthetic network with a known
weight size, run in several ways, each in its own process, with VmRSS / VmHWM read from
/proc/self/status at every step. Nothing is downloaded; the weights are seeded random numbers.

    python -m benchmarks.memory_probe --work /tmp/memprobe --kind dense --mb 768 [--variants a,b] [--size big]

``--kind dense``: a stack of 4096x4096 Dense layers with ReLU on [T, 4096] tokens (T = 64 small, 2048 big);
``--kind conv``: a stack of 1280->1280 3x3 convolutions with ReLU on [1, 1280, S, S] (S = 16 small, 64 big).
Prints one table row per variant: RSS after each step and the peak, in MB, and peak / weight bytes.

    python -m benchmarks.memory_probe --export EXPORT_DIR [--graphs unet] [--calls 2] [--backend-options JSON]
        every graph of an export through runtime/backends.py: RSS after each load and call, output checksum
    python -m benchmarks.memory_probe --ops bcast_add_channel,transpose,...
        RSS kept per op by a chain of 100 identical ops on a [50, 64, 16, 16] tensor
    python -m benchmarks.memory_probe --census FILE.mindir
        op counts and output sizes of a MindIR, broadcasting elementwise ops counted apart
Results and conclusions: benchmarks/NOTES.md, "Where the memory goes (issue 15)".
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


def _marks():
    """A list of (name, RSS MB, peak RSS MB) and the function that appends to it (after a gc)."""
    marks = []

    def mark(name):
        gc.collect()
        rss, hwm = rss_mb()
        marks.append((name, round(rss), round(hwm)))

    return marks, mark


def child(variant: str, work: Path, kind: str, mb: float, size: str, calls: int = 2) -> dict:
    marks, mark = _marks()
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
    marks, mark = _marks()
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


OP_SHAPE = (50, 64, 16, 16)  # the tiny SVD-XT UNet's level-1 activations with the CFG batch: 3.1 MB fp32
OPS = ("add", "mul", "erf", "softmax", "silu", "conv", "matmul_4d", "matmul_2d", "transpose", "bias_add",
       "broadcast_to_add", "bcast_add_channel", "bcast_mul_channel", "bcast_add_lastdim", "bcast_sub_mean")


ops = None  # mindspore.ops, set by op_child: GRAPH_MODE takes no import statement inside _apply


def _apply(kind, x, w, m, b):
    """One op of a per-op chain (``kind`` is a construction-time constant); x: [50, 64, 16, 16]."""
    if kind == "add":
        return x + 1.0
    if kind == "mul":
        return x * 0.99
    if kind == "erf":
        return ops.erf(x)
    if kind == "softmax":
        return ops.softmax(x, -1)
    if kind == "silu":
        return ops.silu(x)
    if kind == "conv":
        return ops.conv2d(x, w, padding=1, pad_mode="pad")
    if kind == "matmul_4d":
        return ops.matmul(x, m)
    if kind == "matmul_2d":
        return ops.matmul(x.reshape(-1, 16), m).reshape(x.shape)
    if kind == "transpose":
        return ops.transpose(x, (0, 1, 3, 2))
    if kind == "bias_add":
        return ops.bias_add(x, b.reshape(-1))
    if kind == "broadcast_to_add":
        return x + ops.broadcast_to(b, x.shape)
    if kind == "bcast_add_channel":
        return x + b
    if kind == "bcast_mul_channel":
        return x * b
    if kind == "bcast_add_lastdim":
        return x + m[0]
    return x - x.mean(-1, keep_dims=True)  # bcast_sub_mean


def op_child(kind: str, n: int = 100) -> dict:
    """RSS kept after the first call of a chain of ``n`` identical ops on an OP_SHAPE tensor."""
    global ops
    import mindspore as ms
    from mindspore import nn
    from mindspore import ops as ms_ops

    ops = ms_ops
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    rng = np.random.default_rng(0)

    class Chain(nn.Cell):
        def __init__(self):
            super().__init__()
            self.w = ms.Parameter(ms.Tensor(rng.standard_normal((64, 64, 3, 3)).astype(np.float32) * 0.01), name="w")
            self.m = ms.Parameter(ms.Tensor(rng.standard_normal((16, 16)).astype(np.float32) * 0.1), name="m")
            self.b = ms.Parameter(ms.Tensor(rng.standard_normal((64, 1, 1)).astype(np.float32)), name="b")

        def construct(self, x):
            for _ in range(n):
                x = _apply(kind, x, self.w, self.m, self.b)
            return x

    net = Chain()
    x = ms.Tensor(rng.standard_normal(OP_SHAPE).astype(np.float32))
    gc.collect()
    before = rss_mb()[0]
    net(x).asnumpy()
    gc.collect()
    kept = rss_mb()[0] - before
    out_mb = np.prod(OP_SHAPE) * 4 / 2 ** 20
    return {"op": kind, "n": n, "kept_mb": round(kept, 1), "per_op_mb": round(kept / n, 2),
            "per_output_byte": round(kept / n / out_mb, 2)}


def census(path: Path) -> list:
    """Op counts and output elements of a MindIR graph, with Add/Sub/Mul/RealDiv/Div split into those that
    broadcast a non-scalar input and those that do not (the node output shapes are stored in the file)."""
    from mindspore.train import mind_ir_pb2

    model = mind_ir_pb2.ModelProto()
    model.ParseFromString(Path(path).read_bytes())
    graph = model.graph
    shapes = {p.name: tuple(p.dims) for p in graph.parameter}
    shapes.update({i.name: tuple(i.tensor[0].dims) for i in graph.input if i.tensor})
    for node in graph.node:
        for attr in node.attribute:
            if attr.name == "shape" and len(attr.tensors) == 1 and node.output:
                shapes[node.output[0]] = tuple(attr.tensors[0].dims)
    stats = {}
    for node in graph.node:
        if not node.op_type.startswith("REF::") or not node.output or node.output[0] not in shapes:
            continue
        op = node.op_type[5:].rsplit(":", 1)[0]
        out = shapes[node.output[0]]
        if op in ("Add", "Sub", "Mul", "RealDiv", "Div"):
            ins = [shapes[i] for i in node.input if i in shapes]
            op += " (broadcast)" if any(s != out and np.prod(s or (1,)) > 1 for s in ins) else " (same/scalar)"
        count, elems = stats.get(op, (0, 0))
        stats[op] = (count + 1, elems + int(np.prod(out or (1,))))
    return sorted(((op, c, e) for op, (c, e) in stats.items()), key=lambda t: -t[2])


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
    parser.add_argument("--ops", help=f"per-op chains instead, comma-separated from {', '.join(OPS)}")
    parser.add_argument("--census", type=Path, help="print the op census of this MindIR file")
    parser.add_argument("--graphs", help="only these graphs of the export (comma-separated)")
    parser.add_argument("--context", help="JSON keyword arguments for ms.set_context in the measured process")
    parser.add_argument("--memory", help="JSON keyword arguments for ms.runtime.set_memory")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the measured process")
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--backend-options", help="JSON keyword arguments for make_backend")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.census:
        for op, count, elems in census(args.census)[:25]:
            print(f"{op:24s} nodes={count:5d}  output elements={elems / 1e6:8.1f} M  ({elems * 4 / 2 ** 20:7.1f} MB fp32)")
        return
    if args.ops:
        for kind in args.ops.split(","):
            if args.child:
                print(json.dumps(op_child(kind)), flush=True)
                return
            proc = subprocess.run([sys.executable, "-m", "benchmarks.memory_probe", "--ops", kind, "--child", "op"],
                                  capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            print(lines[-1] if lines else f"{kind}: FAILED {proc.stderr.strip().splitlines()[-1:]}", flush=True)
        return
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
