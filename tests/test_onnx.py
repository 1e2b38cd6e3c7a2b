"""export-model --onnx at the writer level, on two tiny cells: one built from the shared layers
whose ops the ONNX exporter cannot take as MindSpore writes them (GroupNorm's rsqrt, the exact
GELU's erf, a (3, 1, 1) temporal Conv3d with asymmetric pads), and one with an op it has no
converter for at all (Sign), which must be named in the manifest with the reason.
The end-to-end check (the tiny SVD-XT pipeline on onnxruntime against diffusers) is in test_svd.py."""
from __future__ import annotations

import json

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from video_aot.export.graphs import GraphSpec, TensorSpec
from video_aot.export.writer import write_export
from video_aot.models.layers import gelu
from video_aot.models.svd import TemporalResnetBlock
from video_aot.runtime.backends import MindSporeBackend, make_backend
from video_aot.runtime.manifest import ExportInvalid, sha256_file, verify_export

X = TensorSpec("x", (1, 32, 3, 20))  # [B, C, F, H*W]


class Block(nn.Cell):
    def __init__(self):
        super().__init__()
        self.block = TemporalResnetBlock(32, 32, None, 1e-6)

    def construct(self, x):
        return gelu(self.block(x))


class Half(nn.Cell):
    """Uses one of its two layers, as the VAE encoder's graph uses half of the VAE."""

    def __init__(self):
        super().__init__()
        self.used = nn.Dense(20, 20)
        self.unused = nn.Dense(20, 500)

    def construct(self, x):
        return self.used(x)


class Signed(nn.Cell):
    def construct(self, x):
        return ops.sign(x) * x


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    ms.set_seed(0)
    block = Block()
    for p in block.get_parameters():  # norms' affines and biases away from their init
        p.set_data(p + ms.Tensor(np.random.default_rng(0).standard_normal(p.shape).astype(np.float32) * 0.1))
    half = Half()
    graphs = [(GraphSpec("block", (X,), (TensorSpec("y", X.shape),)), lambda: block),
              (GraphSpec("signed", (X,), (TensorSpec("y", X.shape),)), Signed),
              (GraphSpec("half", (X,), (TensorSpec("y", X.shape),)), lambda: half)]
    manifest = {"family": "svd", "pipeline": "StableVideoDiffusionPipeline", "shapes": {}, "export_key": "test"}
    params = [*block.get_parameters(), *half.get_parameters()]
    before = {id(p): p.asnumpy().copy() for p in params}
    out = write_export(tmp_path_factory.mktemp("onnx") / "e", graphs, manifest, log=lambda *a: None, onnx=True)
    # the weights went out to NAME.onnx.data during the ONNX trace and came back, bit for bit
    assert all(np.array_equal(p.asnumpy(), before[id(p)]) for p in params)
    return out, block


def test_onnx_files_are_listed_checked_and_fixed(export):
    out, _ = export
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["graphs"]["block"]["onnx"]
    assert entry["file"] == "block.onnx" and entry["files"] == ["block.onnx", "block.onnx.data"]
    for name in entry["files"]:
        assert manifest["files"][name] == sha256_file(out / name)
    # the weights are ONNX external data, not in the protobuf (which MindSpore's exporter caps at 2 GB)
    weights = sum(p.size * 4 for p in export[1].get_parameters())
    assert (out / "block.onnx").stat().st_size < weights <= (out / "block.onnx.data").stat().st_size
    assert entry["erf"] == 1 and entry["conv_pads"] == 2 and max(entry["rel_l2_vs_mindir"]) < 1e-5
    # the graph the exporter cannot take is named with the exporter's reason, and leaves no file
    assert list(manifest["onnx_unavailable"]) == ["signed"]
    assert "Sign" in manifest["onnx_unavailable"]["signed"]
    assert "onnx" not in manifest["graphs"]["signed"]
    assert not (out / "signed.onnx").exists() and not (out / "signed.onnx.data").exists()


def test_unused_weights_are_left_out_of_the_data_file(export):
    out, _ = export
    assert (out / "half.onnx.data").stat().st_size < 2 * 4096 + 20 * 4  # used.weight, then used.bias on its page
    x = np.random.default_rng(3).standard_normal(X.shape).astype(np.float32)
    (ours,) = make_backend("onnxruntime").load(out / "half.onnx")(x)
    (mindir,) = MindSporeBackend().load(out / "half.mindir")(x)
    assert np.abs(ours - mindir).max() <= 1e-5 * np.abs(mindir).max()


def test_onnxruntime_runs_the_layers_as_mindspore(export):
    out, block = export
    x = np.random.default_rng(1).standard_normal(X.shape).astype(np.float32)
    graph = make_backend("onnxruntime").load(out / "block.onnx")
    assert graph.input_names == ["x"] and graph.input_shapes == [X.shape]
    # the arena is off unless asked for (it keeps its high-water mark for the session's life)
    assert not graph.session.get_session_options().enable_cpu_mem_arena
    assert make_backend("onnxruntime", arena=True).load(out / "block.onnx").session.get_session_options() \
        .enable_cpu_mem_arena
    (ours,) = graph(x)
    (mindir,) = MindSporeBackend().load(out / "block.mindir")(x)
    expected = block(ms.Tensor(x)).asnumpy()
    assert np.abs(ours - expected).max() <= 1e-5 * np.abs(expected).max()
    assert np.abs(mindir - expected).max() <= 1e-5 * np.abs(expected).max()


@pytest.mark.parametrize("name", ["block.onnx", "block.onnx.data"])
def test_a_modified_onnx_file_is_refused(export, tmp_path, name):
    import shutil

    copy = tmp_path / "e"
    shutil.copytree(export[0], copy)
    (copy / name).chmod(0o644)
    with open(copy / name, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ExportInvalid, match=f"checksum mismatch for {name}"):
        verify_export(copy)


@pytest.mark.parametrize("artifact, hashed, skipped", [("onnx", "block.onnx.data", "block.mindir"),
                                                       ("mindir", "block.mindir", "block.onnx.data")])
def test_the_sums_checked_are_the_loaded_artifacts(export, tmp_path, artifact, hashed, skipped):
    """A backend reads one kind of graph file: the other kind's (the export's weights a second time) is
    checked for presence, not hashed; a graph without an ONNX file keeps its MindIR hashed."""
    import shutil

    copy = tmp_path / "e"
    shutil.copytree(export[0], copy)
    for name in (hashed, skipped):
        (copy / name).chmod(0o644)
        with open(copy / name, "ab") as fh:
            fh.write(b"\0")
    with pytest.raises(ExportInvalid, match=f"checksum mismatch for {hashed}"):
        verify_export(copy, artifact=artifact)
    shutil.copyfile(export[0] / hashed, copy / hashed)
    verify_export(copy, artifact=artifact)
    with pytest.raises(ExportInvalid, match=f"checksum mismatch for {skipped}"):
        verify_export(copy)
    (copy / skipped).unlink()
    with pytest.raises(ExportInvalid, match=f"file {skipped} listed in the manifest is missing"):
        verify_export(copy, artifact=artifact)
    if artifact == "onnx":  # the graph without an ONNX file is read from its MindIR, so that one is hashed
        shutil.copyfile(export[0] / skipped, copy / skipped)
        (copy / "signed.mindir").chmod(0o644)
        with open(copy / "signed.mindir", "ab") as fh:
            fh.write(b"\0")
        with pytest.raises(ExportInvalid, match="checksum mismatch for signed.mindir"):
            verify_export(copy, artifact=artifact)


@pytest.mark.parametrize("dtype", [ms.float16, ms.bfloat16])
def test_half_precision_weights_go_out_and_come_back(tmp_path, dtype):
    """The data file holds each dtype's own bytes (bfloat16 has no numpy type) and the cell gets
    exactly its values back."""
    from onnx import TensorProto

    from video_aot.export.onnx import _weights_back, _weights_out

    cell = nn.Dense(6, 5, dtype=dtype)
    for p in cell.get_parameters():
        p.set_data(ms.Tensor(np.random.default_rng(2).standard_normal(p.shape).astype(np.float32)).astype(dtype))
    before = {p.name: p.astype(ms.float32).asnumpy() for p in cell.get_parameters()}
    moved = _weights_out(cell, tmp_path / "w.data", {})
    assert all(p.shape == (1,) for p in cell.get_parameters())
    expected_type = TensorProto.FLOAT16 if dtype == ms.float16 else TensorProto.BFLOAT16
    assert {m.onnx_type for m in moved.values()} == {expected_type}
    assert all(m.length == 2 * int(np.prod(m.shape)) and m.offset % 4096 == 0 for m in moved.values())
    _weights_back(cell, tmp_path / "w.data", moved)
    for p in cell.get_parameters():
        assert p.dtype == dtype and np.array_equal(p.astype(ms.float32).asnumpy(), before[p.name])


def test_a_network_calling_acos_itself_is_refused(tmp_path):
    """ops.acos is the Erf marker of the ONNX trace: a network's own acos must not turn into Erf."""
    from video_aot.export.onnx import OnnxUnavailable, trace_onnx

    class Acos(nn.Cell):
        def construct(self, x):
            return ops.acos(x)

    spec = GraphSpec("acos", (TensorSpec("x", (2, 3)),), (TensorSpec("y", (2, 3)),))
    with pytest.raises(OnnxUnavailable, match="acos is the Erf marker"):
        trace_onnx(tmp_path, spec, Acos(), tmp_path / "unused.mindir")
    assert not list(tmp_path.iterdir())
