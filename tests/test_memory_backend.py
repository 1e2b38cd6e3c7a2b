"""The MindSpore backend's ``expand_broadcasts`` load path (issue 15): a MindIR whose elementwise ops
broadcast is rewritten so that every broadcast input goes through an explicit BroadcastTo first. It must
give the same outputs as the plain ``ms.load`` path and the eager network, for single-file and split
(graph + variables) exports, and leave the export folder untouched."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from video_aot.runtime import backends

SHAPE = (2, 8, 6, 5)  # x: [B, C, H, W]


def _net():
    import mindspore as ms
    from mindspore import nn, ops

    rng = np.random.default_rng(0)

    def param(shape, name):
        return ms.Parameter(ms.Tensor(rng.standard_normal(shape).astype(np.float32)), name=name)

    class Broadcasting(nn.Cell):
        def __init__(self):
            super().__init__()
            self.bias = param((8, 1, 1), "bias")  # per-channel, broadcast on the second input
            self.scale = param((1, 8, 1, 1), "scale")
            self.shift = param((5,), "shift")  # last axis
            self.lead = param((8, 1, 1), "lead")  # broadcast on the first input
            self.weight = param((5, 5), "weight")

        def construct(self, x, t):
            # x: [B, C, H, W], t: [B, 1, 1, 1]
            y = x + self.bias
            y = y * self.scale
            y = y - y.mean(-1, keep_dims=True)
            y = y / (2.0 + ops.abs(self.shift))
            y = self.lead + y
            y = y * t + 0.5  # a per-sample input and a scalar
            same = ops.matmul(y, self.weight) + y  # same-shape add: left alone
            return y, same

    return Broadcasting()


def _inputs():
    rng = np.random.default_rng(1)
    return [rng.standard_normal(SHAPE).astype(np.float32), rng.standard_normal((2, 1, 1, 1)).astype(np.float32)]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """(folder, single-file MindIR, split MindIR, eager outputs)."""
    import mindspore as ms
    from mindspore.train import serialization

    root = tmp_path_factory.mktemp("memory-backend")
    net = _net()
    xs = [ms.Tensor(a) for a in _inputs()]
    eager = [o.asnumpy() for o in net(*xs)]
    ms.export(net, *xs, file_name=str(root / "single"), file_format="MINDIR")
    saved = serialization.TOTAL_SAVE
    serialization.TOTAL_SAVE = 0  # MindSpore's >1 GB layout: split_graph.mindir + split_variables/
    try:
        ms.export(net, *xs, file_name=str(root / "split"), file_format="MINDIR")
    finally:
        serialization.TOTAL_SAVE = saved
    assert (root / "split_variables").is_dir()
    return root, root / "single.mindir", root / "split_graph.mindir", eager


def _listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("which", ["single", "split"])
def test_expanded_graph_matches_plain_load_and_eager(exports, tmp_path, which):
    root, single, split, eager = exports
    path = single if which == "single" else split
    before = _listing(root)
    plain = backends.MindSporeBackend(expand_broadcasts=False).load(path)
    expanded = backends.MindSporeBackend(expand_broadcasts=True, compile_cache=str(tmp_path)).load(path)
    assert plain.expanded == 0
    # bias, scale, the mean, the shift, lead and t: six broadcast inputs; the scalar and same-shape adds stay
    assert expanded.expanded == 6
    ref = plain(*_inputs())
    out = expanded(*_inputs())
    assert len(out) == len(ref) == len(eager) == 2
    for o, r, e in zip(out, ref, eager):
        assert o.shape == r.shape == SHAPE
        np.testing.assert_array_equal(o, r)  # the same kernels on the same values: bit-identical here
        assert np.linalg.norm(o - e) / np.linalg.norm(e) <= 1e-6
    assert _listing(root) == before  # nothing written next to the export
    assert list(tmp_path.iterdir()) == []  # the rewritten MindIR is removed once loaded


def test_a_file_loaded_again_reuses_its_compiled_graph(exports, tmp_path):
    """MindSpore 2.7.1 keeps what a graph's first call allocates after the graph is deleted, so a process
    that loads the same file again gets the graph it already compiled (with the same options); a file
    written again over the same path is loaded anew."""
    _, single, _, eager = exports
    path = tmp_path / "net.mindir"
    shutil.copy(single, path)
    backend = backends.MindSporeBackend(expand_broadcasts=False)
    first = backend.load(path)
    out = first(*_inputs())
    assert backend.load(path) is first
    assert backends.MindSporeBackend(expand_broadcasts=False).load(str(path)) is first
    expanded = backends.MindSporeBackend(expand_broadcasts=True, compile_cache=str(tmp_path / "c")).load(path)
    assert expanded is not first and expanded.expanded == 6
    shutil.copy(single, tmp_path / "new.mindir")
    os.replace(tmp_path / "new.mindir", path)  # a new file at the same path, as a new export writes
    second = backend.load(path)
    assert second is not first
    for a, b, e in zip(second(*_inputs()), out, eager):
        np.testing.assert_array_equal(a, b)
        assert np.linalg.norm(a - e) / np.linalg.norm(e) <= 1e-6


def test_env_switch_and_make_backend(monkeypatch):
    monkeypatch.setenv("VIDEO_AOT_EXPAND_BROADCASTS", "1")
    assert backends.make_backend("mindspore").expand_broadcasts is True
    monkeypatch.setenv("VIDEO_AOT_EXPAND_BROADCASTS", "0")
    assert backends.make_backend("mindspore").expand_broadcasts is False
    assert backends.make_backend("mindspore", expand_broadcasts=True).expand_broadcasts is True


def test_rewrite_keeps_a_graph_without_broadcasts(tmp_path):
    import mindspore as ms
    from mindspore import nn
    from mindspore.train import mind_ir_pb2

    class Plain(nn.Cell):
        def construct(self, x):
            return x * x + 1.0

    ms.export(Plain(), ms.Tensor(np.ones(SHAPE, np.float32)), file_name=str(tmp_path / "plain"),
              file_format="MINDIR")
    model = mind_ir_pb2.ModelProto()
    model.ParseFromString((tmp_path / "plain.mindir").read_bytes())
    nodes = len(model.graph.node)
    assert backends.expand_broadcasts(model.graph, "BroadcastTo:x") == 0
    assert len(model.graph.node) == nodes


def test_export_writes_the_graph_expanded(tmp_path):
    """export/writer.trace_graph (every export-model graph) writes the MindIR already expanded, validated
    against the eager cell; with expand=False it is the plain trace. Both give the same outputs."""
    from video_aot.export.graphs import GraphSpec
    from video_aot.export.writer import trace_graph
    from video_aot.runtime.manifest import TensorSpec

    spec = GraphSpec("net", (TensorSpec("x", SHAPE), TensorSpec("t", (2, 1, 1, 1))),
                     (TensorSpec("y", SHAPE), TensorSpec("same", SHAPE)))
    outs = {}
    for expand in (True, False):
        folder = tmp_path / str(expand)
        folder.mkdir()
        entry = trace_graph(folder, spec, _net(), validate=True, expand=expand)
        assert entry.get("broadcasts_expanded", 0) == (6 if expand else 0)
        assert max(entry["validation_rel_l2"]) <= 1e-6
        assert sorted(p.name for p in folder.iterdir()) == ["net.mindir"]  # no temporary file left
        graph = backends.MindSporeBackend(expand_broadcasts=False).load(folder / entry["file"])
        outs[expand] = graph(*_inputs())
        # loading it with the runtime rewrite finds nothing left to expand
        assert backends.MindSporeBackend(expand_broadcasts=True, compile_cache=str(tmp_path)).load(
            folder / entry["file"]).expanded == (0 if expand else 6)
    for a, b in zip(outs[True], outs[False]):
        np.testing.assert_array_equal(a, b)


def _split_export(net, xs, name):
    import mindspore as ms
    from mindspore.train import serialization

    saved = serialization.TOTAL_SAVE
    serialization.TOTAL_SAVE = 0  # MindSpore's >1 GB layout: NAME_graph.mindir + NAME_variables/
    try:
        ms.export(net, *xs, file_name=str(name), file_format="MINDIR")
    finally:
        serialization.TOTAL_SAVE = saved


def test_split_export_weights_are_read_into_the_graph(tmp_path):
    """A split export loads without its weights, which are then read into the cell one at a time: the same
    outputs as MindSpore's own ms.load of the split files, for fp32, fp16 and bf16 weights."""
    import mindspore as ms
    from mindspore import nn, ops

    rng = np.random.default_rng(3)

    class Mixed(nn.Cell):
        def __init__(self):
            super().__init__()
            self.w32 = ms.Parameter(ms.Tensor(rng.standard_normal((5, 5)).astype(np.float32)), name="w32")
            self.w16 = ms.Parameter(ms.Tensor(rng.standard_normal((5,)).astype(np.float16)), name="w16")
            self.wbf = ms.Parameter(ms.Tensor(rng.standard_normal((8, 1, 1)).astype(np.float32), ms.bfloat16),
                                    name="wbf")

        def construct(self, x, t):
            y = ops.matmul(x, self.w32) + ops.cast(self.w16, ms.float32)
            return y * ops.cast(self.wbf, ms.float32) + t

    net = Mixed()
    xs = [ms.Tensor(a) for a in _inputs()]
    eager = net(*xs).asnumpy()
    _split_export(net, xs, tmp_path / "mixed")
    path = tmp_path / "mixed_graph.mindir"
    reference = nn.GraphCell(ms.load(str(path)))(*xs).asnumpy()
    cell, expanded = backends.load_graph_cell(path, workdir=str(tmp_path / "work"))
    assert expanded == 0
    params = cell.parameters_dict()
    assert {k: str(v.dtype) for k, v in params.items()} == {"w32": "Float32", "w16": "Float16", "wbf": "BFloat16"}
    np.testing.assert_array_equal(params["wbf"].float().asnumpy(), net.wbf.float().asnumpy())
    out = cell(*xs).asnumpy()
    np.testing.assert_array_equal(out, reference)
    np.testing.assert_allclose(out, eager, rtol=1e-6, atol=1e-6)
    assert list((tmp_path / "work").iterdir()) == []  # the weightless MindIR is removed once loaded


_PEAK_CHILD = """
import sys
from pathlib import Path
import mindspore as ms
import numpy as np
from video_aot.runtime import backends

def status(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024

ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
path = Path(sys.argv[1])
before = status("VmRSS")
if sys.argv[2] == "plain":
    cell = ms.nn.GraphCell(ms.load(str(path)))
else:
    cell = backends.load_graph_cell(path)[0]
out = cell(ms.Tensor(np.ones((4, 1024), np.float32))).asnumpy()
print(status("VmHWM") - before, float(out.sum()))
"""


def test_split_export_loads_holding_its_weights_once(tmp_path):
    """ms.load of a split export holds its weights twice while it loads; the runtime's load holds them once
    (one weight at a time on top). Measured in child processes on 256 MB of weights."""
    import subprocess
    import sys

    import mindspore as ms
    from mindspore import nn

    rng = np.random.default_rng(4)

    class Dense(nn.Cell):
        def __init__(self):
            super().__init__()
            self.layers = nn.CellList([nn.Dense(1024, 1024, weight_init=ms.Tensor(
                rng.standard_normal((1024, 1024)).astype(np.float32) * 0.03)) for _ in range(64)])

        def construct(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    _split_export(Dense(), [ms.Tensor(np.ones((4, 1024), np.float32))], tmp_path / "dense")
    weights = sum(f.stat().st_size for f in (tmp_path / "dense_variables").iterdir())
    results = {}
    for how in ("plain", "runtime"):
        proc = subprocess.run([sys.executable, "-c", _PEAK_CHILD, str(tmp_path / "dense_graph.mindir"), how],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        growth, total = proc.stdout.split()
        results[how] = (int(growth) / weights, float(total))
    assert results["plain"][1] == results["runtime"][1]  # the same outputs
    assert results["plain"][0] > 1.8, results  # MindSpore's own load: the weights twice
    assert results["runtime"][0] < 1.3, results  # the runtime's: once, plus the graph's compile
