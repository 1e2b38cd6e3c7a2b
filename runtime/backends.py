"""Backends that load exported graphs and run them on numpy arrays.

A backend turns a MindIR file into a callable ``graph(*arrays) -> tuple of arrays``. The
MindSpore backend uses ``ms.load`` + ``nn.GraphCell``; the MindSpore Lite backend (when
``mindspore_lite`` is importable) builds a Lite model from the same file. The onnxruntime backend
loads each graph's ONNX file instead (``artifact = "onnx"``; written by export-model --onnx).
"""
from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import numpy as np

BACKENDS = ("mindspore", "lite", "onnxruntime")

# Elementwise ops whose MindSpore 2.7.1 CPU kernel, when an input is broadcast, keeps a buffer of about 4.5x
# its output for the life of the compiled graph (benchmarks/NOTES.md, "Where the memory goes").
BROADCAST_BINARY = ("Add", "Sub", "Mul", "RealDiv", "Div")


def _numel(shape) -> int:
    return int(np.prod(shape)) if shape else 1


def expand_broadcasts(graph, prim: str) -> int:
    """Rewrite a MindIR ``GraphProto`` in place so that no ``BROADCAST_BINARY`` node broadcasts a
    non-scalar input: such an input first goes through an explicit ``BroadcastTo`` (primitive ``prim``)
    to the node's output shape. The values are unchanged; the broadcast copy is an ordinary pooled
    intermediate, freed after use, instead of a persistent per-kernel buffer. Returns the number of
    inputs expanded."""
    from mindspore.train import mind_ir_pb2

    shapes, dtypes = {}, {}
    for param in graph.parameter:
        shapes[param.name], dtypes[param.name] = tuple(param.dims), param.data_type
    for inp in graph.input:
        if inp.tensor:
            shapes[inp.name], dtypes[inp.name] = tuple(inp.tensor[0].dims), inp.tensor[0].data_type
    for node in graph.node:
        for attr in node.attribute:
            if attr.name == "shape" and len(attr.tensors) == 1 and node.output:
                shapes[node.output[0]] = tuple(attr.tensors[0].dims)
                dtypes[node.output[0]] = attr.tensors[0].data_type
    nodes, count = [], 0
    for node in graph.node:
        op = node.op_type[len("REF::"):].rsplit(":", 1)[0] if node.op_type.startswith("REF::") else None
        out = shapes.get(node.output[0]) if node.output else None
        if op in BROADCAST_BINARY and out is not None and len(node.input) == 2:
            for k, name in enumerate(list(node.input)):
                shape = shapes.get(name)
                if shape is None or shape == out or _numel(shape) <= 1 or name not in dtypes:
                    continue
                count += 1
                const = mind_ir_pb2.NodeProto(name=f"{name}__expand_shape{count}", op_type="Constant")
                const.output.append(const.name)
                value = const.attribute.add(name="value", type=mind_ir_pb2.AttributeProto.TUPLE)
                for dim in out:
                    value.values.add(ints=[dim], type=mind_ir_pb2.AttributeProto.INT64)
                expand = mind_ir_pb2.NodeProto(name=f"{name}__expand{count}", op_type=f"REF::{prim}",
                                               domain=node.domain)
                expand.output.append(expand.name)
                expand.input.extend([name, const.name])
                attr = expand.attribute.add(name="shape", type=mind_ir_pb2.AttributeProto.TENSORS)
                attr.tensors.add(dims=out, data_type=dtypes[name])
                nodes.extend([const, expand])
                node.input[k] = expand.name
        nodes.append(node)
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
    return count


def _read_model(path: Path):
    from mindspore.train import mind_ir_pb2

    model = mind_ir_pb2.ModelProto()
    model.ParseFromString(path.read_bytes())
    return model


def _expand_model(model) -> int:
    """``expand_broadcasts`` in every graph of a MindIR ``ModelProto``; returns the inputs expanded."""
    from mindspore.train import mind_ir_pb2

    prims = [p.name for p in model.primitives if p.op_type == "BroadcastTo"]
    if not prims:
        model.primitives.add(name="BroadcastTo:expand", op_type="BroadcastTo",
                             prim_type=mind_ir_pb2.PrimitiveProto.PRIMITIVE_FUNCTION)
        prims = ["BroadcastTo:expand"]
    return sum(expand_broadcasts(g, prims[0]) for g in [model.graph, *model.functions])


def expand_mindir(path: Path, target: Path) -> int:
    """Read the MindIR at ``path``, ``expand_broadcasts`` in every graph of it and write it to ``target``
    (which may be ``path``). Export does this once to each graph it writes (export/writer.py); loading an
    export written without it can do it on the fly (``load_graph_cell``). Returns the number of inputs expanded."""
    model = _read_model(path)
    count = _expand_model(model)
    if count or target != path:
        data = model.SerializeToString()
        del model
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return count


# MindIR TensorProto data types -> numpy, for the weights read from a split export's variables file
# (bfloat16, which numpy lacks, is read as its 16 bits and widened exactly to float32)
_MINDIR_DTYPES = {1: np.float32, 10: np.float16, 11: np.float64, 17: np.float64, 2: np.uint8, 3: np.int8,
                  4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64, 12: np.uint32, 13: np.uint64, 9: np.bool_,
                  16: np.uint16}
_BFLOAT16 = 16


def _variables_folder(path: Path):
    """A split export's weights folder (``NAME_graph.mindir`` -> ``NAME_variables/``), or None."""
    if not path.name.endswith("_graph.mindir"):
        return None
    folder = path.parent / (path.name[:-len("_graph.mindir")] + "_variables")
    return folder if folder.is_dir() else None


def _take_external_weights(model) -> list:
    """Clear the external data of every parameter of ``model``'s graphs that has some, and return what
    it pointed at: [(parameter name, dims, data type, file, offset, length)]. ``ms.load`` of the result
    builds the graph without allocating those weights."""
    taken = []
    for graph in [model.graph, *model.functions]:
        for param in graph.parameter:
            if not param.HasField("external_data"):
                continue
            ext = param.external_data
            if param.data_type not in _MINDIR_DTYPES:
                raise ValueError(f"{param.name}: weights of MindIR data type {param.data_type} are not supported")
            taken.append((param.name.split(":", 1)[-1], tuple(param.dims), param.data_type, ext.location,
                          ext.offset, ext.length))
            param.ClearField("external_data")
    return taken


def _read_weight(folder: Path, dims, data_type: int, location: str, offset: int, length: int):
    """One weight of a split export as a MindSpore tensor, read straight from its variables file."""
    import mindspore as ms

    dtype = np.dtype(_MINDIR_DTYPES[data_type])
    count = int(np.prod(dims)) if dims else 1
    if count * dtype.itemsize != length:
        raise ValueError(f"{location}: {length} bytes at offset {offset} do not hold {dims} of {dtype}")
    array = np.empty(dims, dtype)
    with open(folder / location, "rb") as fh:
        fh.seek(offset)
        if fh.readinto(memoryview(array).cast("B")) != length:
            raise ValueError(f"{location}: the file ends before offset {offset} + {length}")
    if data_type == _BFLOAT16:
        return ms.Tensor((array.astype(np.uint32) << 16).view(np.float32), dtype=ms.bfloat16)
    return ms.Tensor.from_numpy(array)


def load_graph_cell(path: Path, expand: bool = False, workdir=None):
    """``nn.GraphCell`` of the MindIR at ``path``; returns (cell, number of broadcast inputs expanded).

    ``expand``: ``expand_mindir`` first (same values; for exports written without it). A split export
    (``NAME_graph.mindir`` with its weights in ``NAME_variables/``, MindSpore's layout above 1 GB of
    weights) is loaded without its weights, which are then read into the cell's parameters one at a time:
    ``ms.load`` of such a graph holds the weights twice while it loads (a 6 GB UNet peaks at 12 GB), this
    way the process holds them once (benchmarks/NOTES.md, "ms.load's transient")."""
    import mindspore as ms
    from mindspore import nn

    variables = _variables_folder(path)
    if not expand and variables is None:
        return nn.GraphCell(ms.load(str(path))), 0
    model = _read_model(path)  # parsed once for both rewrites
    count = _expand_model(model) if expand else 0
    weights = _take_external_weights(model) if variables is not None else []
    if workdir:
        os.makedirs(workdir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mindir-", dir=workdir) as tmp:
        target = Path(tmp) / path.name
        target.write_bytes(model.SerializeToString())
        del model
        graph = ms.load(str(target))
    cell = nn.GraphCell(graph)
    params = cell.parameters_dict()
    missing = sorted({w[0] for w in weights} - set(params))
    if missing:
        raise ValueError(f"{path}: the graph has no parameter named {missing[:3]}")
    for name, dims, data_type, location, offset, length in weights:
        params[name].set_data(_read_weight(path.parent, dims, data_type, location, offset, length))
    return cell, count


class MindSporeGraph:
    """``load_graph_cell`` (``ms.load`` + ``nn.GraphCell``); with ``expand=True`` the MindIR is first
    rewritten by ``expand_broadcasts`` (same values, far less resident memory on the CPU)."""

    def __init__(self, path: Path, expand: bool = False, workdir=None):
        import mindspore as ms

        self.path = path
        self.cell, self.expanded = load_graph_cell(path, expand, workdir)
        self._ms = ms
        self._lock = threading.Lock()  # one graph may serve several pipelines (MindSporeBackend.load)

    def __call__(self, *arrays):
        with self._lock:
            outs = self.cell(*[self._ms.Tensor(np.ascontiguousarray(a)) for a in arrays])
            outs = outs if isinstance(outs, (tuple, list)) else (outs,)
            return tuple(o.asnumpy() for o in outs)


# MindSpore 2.7.1 never gives back what a graph's first call compiles and allocates (its kernels' buffers),
# even once the GraphCell is deleted: the tiny CogVideoX VAE decoder (2 MB of weights) keeps 170 MB per
# load, so a server that reloads a model, or a process that loads the same export twice, grew by that much
# each time (benchmarks/NOTES.md, "A deleted pipeline's graphs are not given back"). A process therefore
# keeps one MindSporeGraph per file version and every later load of that file reuses it, compiled.
_LOADED: dict[tuple, MindSporeGraph] = {}
_LOADED_LOCK = threading.Lock()


def _file_version(path: Path) -> tuple:
    """What changes when an export is written again over the same path (files are replaced, not edited)."""
    st = path.stat()
    version = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    variables = _variables_folder(path)  # a split export's weights live in its variables folder
    if variables is not None:
        version += tuple((f.name, f.stat().st_ino, f.stat().st_mtime_ns) for f in sorted(variables.iterdir()))
    return version


class MindSporeBackend:
    name = "mindspore"

    def __init__(self, device_target: str = "CPU", compile_cache: str | None = None, graph_kernel: bool = False,
                 expand_broadcasts: bool | None = None):
        import mindspore as ms

        self.device_target = device_target
        # export-model writes every graph expanded already (export/writer.py); this rewrites each MindIR again
        # at load, for exports written with --no-expand-broadcasts or before. None reads
        # VIDEO_AOT_EXPAND_BROADCASTS=1
        if expand_broadcasts is None:
            expand_broadcasts = os.environ.get("VIDEO_AOT_EXPAND_BROADCASTS", "0") == "1"
        self.expand_broadcasts = expand_broadcasts
        self.compile_cache = compile_cache
        self.graph_kernel = graph_kernel
        ms.set_context(mode=ms.GRAPH_MODE, device_target=device_target)
        if graph_kernel:
            # graph-kernel fusion happens when the runtime compiles the loaded graph, not at export.
            ms.set_context(enable_graph_kernel=True)
        if compile_cache:
            os.makedirs(compile_cache, exist_ok=True)

    def load(self, path) -> MindSporeGraph:
        """The graph at ``path``, compiled at its first call; a file this process has loaded before (same
        version, same options) gives back that graph instead of a second copy (see ``_LOADED``)."""
        path = Path(path)
        key = (_file_version(path), self.expand_broadcasts, self.device_target, self.graph_kernel)
        with _LOADED_LOCK:
            graph = _LOADED.get(key)
            if graph is None:
                graph = _LOADED[key] = MindSporeGraph(path, expand=self.expand_broadcasts, workdir=self.compile_cache)
        return graph


class LiteGraph:
    def __init__(self, path: Path, device_target: str):
        import mindspore_lite as mslite

        context = mslite.Context()
        context.target = [device_target.lower()]
        self.model = mslite.Model()
        self.model.build_from_file(str(path), mslite.ModelType.MINDIR, context)

    def __call__(self, *arrays):
        inputs = self.model.get_inputs()
        for tensor, array in zip(inputs, arrays):
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
        return tuple(o.get_data_to_numpy() for o in self.model.predict(inputs))


class LiteBackend:
    name = "lite"

    def __init__(self, device_target: str = "CPU"):
        import mindspore_lite  # noqa: F401  (fails early with ImportError when absent)

        self.device_target = device_target

    def load(self, path) -> LiteGraph:
        return LiteGraph(Path(path), self.device_target)


def give_back_large_buffers(threshold: int = 1 << 20) -> bool:
    """glibc only: serve every allocation of ``threshold`` bytes or more with its own mapping, returned to the
    system when it is freed. glibc's default starts at 128 KB but raises the threshold to the size of each
    large block freed (up to 32 MB), so after the first activations are freed the next ones come from the
    heap, where freed blocks stay resident and fragment. With onnxruntime's arena off every activation is
    such an allocation: the small CogVideoX-2b VAE decoder peaked at 1629 MB with glibc's default and at
    1101 MB with this, at the same speed (benchmarks/NOTES.md, "Activations given back"). Process-wide; left
    alone when the user set MALLOC_MMAP_THRESHOLD_. Returns whether it was set."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        return False


class OnnxRuntimeGraph:
    """An onnxruntime CPU session over one graph's ONNX file, called with arrays in the graph's input order.

    ``arena``: onnxruntime's CPU memory arena, off by default. The arena keeps every block it has
    grown to, in power-of-two steps, for the life of the session: on the small Mochi-1 the VAE
    decoder's activations took the process from 3155 MB (weights) to 4161 MB with the arena after one
    generation and 4472 MB after two, against 3810 MB without it, at the same generation time
    (benchmarks/NOTES.md, "The onnxruntime arena")."""

    def __init__(self, path: Path, threads: int = 0, arena: bool = False):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        options.enable_cpu_mem_arena = arena
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        # the static shapes the file was traced with (checked against the manifest by the pipeline)
        self.input_shapes = [tuple(i.shape) for i in self.session.get_inputs()]

    def __call__(self, *arrays):
        return tuple(self.session.run(None, dict(zip(self.input_names, arrays))))


class OnnxRuntimeBackend:
    """Runs the ONNX artifacts of an export (export-model --onnx) with onnxruntime on the CPU."""

    name = "onnxruntime"
    artifact = "onnx"
    device_target = "CPU"

    def __init__(self, threads: int = 0, arena: bool = False):
        import onnxruntime  # noqa: F401  (fails early with ImportError when absent)

        self.threads = threads
        self.arena = arena
        if not arena:
            give_back_large_buffers()

    def load(self, path) -> OnnxRuntimeGraph:
        return OnnxRuntimeGraph(Path(path), self.threads, self.arena)


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def lite_available() -> bool:
    return _importable("mindspore_lite")


def onnx_serves(export) -> bool:
    """Every graph of ``export`` has an ONNX file and onnxruntime is importable."""
    graphs = export.manifest["graphs"].values()
    return bool(graphs) and all(graph.get("onnx") for graph in graphs) and _importable("onnxruntime")


def make_backend(name: str | None = None, **kwargs):
    """``None`` picks MindSpore Lite when it is importable, else MindSpore."""
    if name is None:
        name = "lite" if lite_available() else "mindspore"
    if name == "mindspore":
        return MindSporeBackend(**kwargs)
    if name == "lite":
        return LiteBackend(**{k: v for k, v in kwargs.items() if k == "device_target"})
    if name == "onnxruntime":
        return OnnxRuntimeBackend(**{k: v for k, v in kwargs.items() if k in ("threads", "arena")})
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
