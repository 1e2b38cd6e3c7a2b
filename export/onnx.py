"""ONNX artifacts of the exported graphs, for the onnxruntime backend (runtime/backends.py).

Each graph's cell is traced a second time by MindSpore's ONNX exporter (the steps of
``ms.export(..., file_format="ONNX")``); the same network, the same static shapes. The weights go to
``NAME.onnx.data`` (ONNX external data), not into the protobuf: the exporter serialises them inline
and refuses a network over protobuf's 2 GB, which every full-size UNet and transformer is. So after
the trace is compiled and before the ONNX proto is built, each parameter's values are written to the
data file and the cell holds a one-element placeholder; the initializers the exporter writes for the
placeholders are then pointed at the data file with their real shapes, and the cell reads its
weights back from the file. The weights are in memory once throughout.

MindSpore 2.7.1's ONNX exporter needs three more kinds of help:

- It has no converter for Rsqrt or Erf. While the ONNX trace runs (``exporter_ops``),
  ``mindspore.ops.rsqrt`` is written as ``1 / sqrt`` and ``mindspore.ops.erf`` as ``ops.acos``, a
  marker op the exporter does convert; ``finish`` turns every Acos node back into ONNX's own Erf, so
  onnxruntime computes the exact GELU. No network here calls acos itself: during the trace a direct
  call fails the export of that graph rather than being mistaken for a marker. The MindIR graphs are
  traced outside this context and keep Rsqrt and Erf.
- It writes a Conv's ``pads`` in MindSpore's per-axis order (begin, end of each spatial axis) where
  ONNX wants every axis' begin, then every axis' end. A symmetric pad reads the same either way; the
  SVD temporal convs' (1, 1, 0, 0) did not, and onnxruntime refused the graph.
- Its input and output names are internal ("inputs0", "320-Default/..."); they are renamed to the
  names the manifest declares.

Each ONNX graph is checked, before it is listed, by running onnxruntime on the graph's dummy inputs
against the MindIR graph just written: relative L2 within the graph's tolerance or ``ONNX_TOLERANCE``,
whichever is larger. onnxruntime's kernels sum in another order than MindSpore's, and a deep network
with random weights amplifies that: on the tiny ModelScope T2V UNet at guidance 7.5, MindSpore is
1.5e-3 from diffusers and onnxruntime 3.6e-3 (2.2e-3 from MindSpore), while at guidance 1 both are
within 1e-4 of diffusers. A conversion error shows far above that (the SVD temporal convs' pads
before the fix made a graph onnxruntime refused). The pipelines' parity tests against diffusers are
the real check. A graph that fails any step is left out and named in the manifest with the reason.

Import order matters: MindSpore must be imported before ``onnx`` (MindSpore selects the pure-Python
protobuf that its own ``*_pb2`` modules need; ``onnx`` imported first loads the C one and MindSpore's
import then fails).
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import NamedTuple

import mindspore as ms
import numpy as np
from mindspore import ops

from video_aot.runtime.backends import OnnxRuntimeGraph, load_graph_cell

from .graphs import GraphSpec, rel_l2

_SQRT = ops.sqrt
_ACOS = ops.acos


ONNX_TOLERANCE = 5e-3  # relative L2 of onnxruntime against the MindIR graph (fp32); see the module docstring
DATA_ALIGNMENT = 4096  # each weight starts on a page in NAME.onnx.data


class OnnxUnavailable(RuntimeError):
    """This graph has no ONNX artifact; the message says why."""


def _rsqrt(x):
    return 1.0 / _SQRT(x)


def _erf_marker(x):
    return _ACOS(x)  # Acos -> Erf in finish()


def _acos_reserved(x):
    raise ValueError("ops.acos is the Erf marker of the ONNX export; a network that calls acos itself "
                     "cannot be exported to ONNX this way")


@contextlib.contextmanager
def exporter_ops():
    """Within: ops.rsqrt, ops.erf (and ops.acos) as the ONNX exporter can convert them."""
    saved = ops.rsqrt, ops.erf, ops.acos
    ops.rsqrt, ops.erf, ops.acos = _rsqrt, _erf_marker, _acos_reserved
    try:
        yield
    finally:
        ops.rsqrt, ops.erf, ops.acos = saved


def finish(model, spec: GraphSpec) -> dict:
    """Fix what the exporter wrote (see the module docstring) in the ONNX ``model``, in place.
    Returns counts of what was changed."""
    graph = model.graph
    erf = conv = 0
    for node in graph.node:
        if node.op_type == "Acos":
            node.op_type = "Erf"
            erf += 1
        elif node.op_type == "Conv":
            for attr in node.attribute:
                if attr.name == "pads" and len(attr.ints) % 2 == 0:
                    pairs = [tuple(attr.ints[i:i + 2]) for i in range(0, len(attr.ints), 2)]
                    fixed = [p[0] for p in pairs] + [p[1] for p in pairs]
                    if fixed != list(attr.ints):
                        conv += 1
                        del attr.ints[:]
                        attr.ints.extend(fixed)
    renames = {}
    for value, wanted in [*zip(graph.input, spec.inputs), *zip(graph.output, spec.outputs)]:
        renames[value.name] = wanted.name
    if len(graph.input) != len(spec.inputs) or len(graph.output) != len(spec.outputs):
        raise OnnxUnavailable(f"the exporter wrote {len(graph.input)} inputs and {len(graph.output)} outputs; "
                              f"the graph declares {len(spec.inputs)} and {len(spec.outputs)}")
    for value in [*graph.input, *graph.output]:
        value.name = renames[value.name]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        for i, name in enumerate(node.output):
            if name in renames:
                node.output[i] = renames[name]
    return {"erf": erf, "conv_pads": conv}


class _Moved(NamedTuple):
    """Where one parameter's bytes went in the data file."""
    offset: int
    length: int
    onnx_type: int  # the ONNX element type
    shape: tuple
    dtype: object  # the parameter's MindSpore dtype
    stored: object  # the numpy dtype of the stored bytes (uint16 for bfloat16, which numpy lacks)


def _host_array(param) -> tuple[np.ndarray, int]:
    """The parameter's bytes as an array, and their ONNX element type."""
    from onnx import TensorProto, helper

    if param.dtype == ms.bfloat16:  # a bfloat16 is the upper half of a float32's bits
        bits = (param.astype(ms.float32).asnumpy().view(np.uint32) >> 16).astype(np.uint16)
        return bits, TensorProto.BFLOAT16
    array = param.asnumpy()
    return array, helper.np_dtype_to_tensor_dtype(array.dtype)


def _weights_out(cell, data: Path, moved: dict) -> dict:
    """Move every parameter of ``cell`` into the file ``data``, each on a page of its own, and leave a
    one-element placeholder in the cell. Fills ``moved`` (name -> _Moved) as it goes, so that a failure
    half-way still knows which parameters to give back; returns it."""
    with open(data, "wb") as fh:
        for param in cell.get_parameters():
            array, onnx_type = _host_array(param)
            array = np.ascontiguousarray(array)
            offset = fh.seek(-fh.tell() % DATA_ALIGNMENT + fh.tell())
            fh.write(memoryview(array).cast("B"))
            moved[param.name] = _Moved(offset, array.nbytes, onnx_type, tuple(param.shape), param.dtype, array.dtype)
            del array
            param.set_data(ms.Tensor(np.zeros((1,), np.float32)).astype(param.dtype), slice_shape=True)
    return moved


def _weights_back(cell, data: Path, moved: dict):
    """Undo _weights_out: each moved parameter reads its values back from ``data``."""
    for param in cell.get_parameters():
        if param.name not in moved:
            continue
        m = moved[param.name]
        array = np.fromfile(data, dtype=m.stored, count=m.length // m.stored.itemsize, offset=m.offset)
        array = array.reshape(m.shape)
        if m.dtype == ms.bfloat16:
            value = ms.Tensor((array.astype(np.uint32) << 16).view(np.float32)).astype(ms.bfloat16)
        else:
            value = ms.Tensor(array)
        param.set_data(value, slice_shape=True)


def _point_to_data(model, data: Path, moved: dict):
    """Every initializer the exporter wrote for a moved parameter now names its bytes in ``data``."""
    from onnx import TensorProto

    for tensor in model.graph.initializer:
        if tensor.name not in moved:
            continue
        m = moved[tensor.name]
        tensor.ClearField("raw_data")
        del tensor.dims[:]
        tensor.dims.extend(m.shape)
        tensor.data_type = m.onnx_type
        tensor.data_location = TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (("location", data.name), ("offset", str(m.offset)), ("length", str(m.length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value


def _keep_only(data: Path, moved: dict, keep) -> dict:
    """Rewrite ``data`` with only the tensors named in ``keep`` (a graph traced from one part of a
    network, the VAE's encoder say, leaves the other parts' weights unused); returns their new places."""
    kept = {}
    partial = data.with_name(data.name + ".partial")
    with open(data, "rb") as src, open(partial, "wb") as dst:
        for name, m in moved.items():
            if name not in keep:
                continue
            offset = dst.seek(-dst.tell() % DATA_ALIGNMENT + dst.tell())
            src.seek(m.offset)
            left = m.length
            while left:
                chunk = src.read(min(left, 1 << 24))
                if not chunk:
                    raise OnnxUnavailable(f"{data.name} ended before the bytes of {name}")
                dst.write(chunk)
                left -= len(chunk)
            kept[name] = m._replace(offset=offset)
    os.replace(partial, data)
    return kept


def trace_onnx(folder: Path, spec: GraphSpec, cell, mindir: Path) -> dict:
    """Write ``folder/NAME.onnx`` (the graph) and ``NAME.onnx.data`` (the weights it uses) for ``cell``
    and check them against the MindIR graph at ``mindir``. Returns the manifest's ``onnx`` entry for the
    graph; raises OnnxUnavailable with the reason (and leaves no file behind). The cell has its weights
    back on return either way."""
    target, data = folder / f"{spec.name}.onnx", folder / f"{spec.name}.onnx.data"
    try:
        return _write_checked(spec, cell, mindir, target, data)
    except OnnxUnavailable:
        for path in (target, data, data.with_name(data.name + ".partial")):
            path.unlink(missing_ok=True)
        raise


def _write_checked(spec: GraphSpec, cell, mindir: Path, target: Path, data: Path) -> dict:
    from mindspore.common.api import _cell_graph_executor as executor

    inputs = spec.dummy_inputs()
    start = time.perf_counter()
    training, moved = cell.training, {}
    cell.set_train(False)
    try:
        try:  # what ms.export(..., file_format="ONNX") does, with the weights taken out before the proto is built
            with exporter_ops():
                graph_id, _ = executor.compile(cell, *[ms.Tensor(a) for a in inputs], phase="export.onnx",
                                               do_convert=False)
            _weights_out(cell, data, moved)
            stream = executor._get_func_graph_proto(cell, graph_id)
        except Exception as err:  # the exporter's own message names the op it has no converter for
            raise OnnxUnavailable(f"MindSpore's ONNX exporter failed: {str(err).strip().splitlines()[0]}") from None
        import onnx

        try:
            model = onnx.load_from_string(stream)
            del stream
            used = {t.name for t in model.graph.initializer} & moved.keys()
            if used != moved.keys():
                _weights_back(cell, data, {k: m for k, m in moved.items() if k not in used})
                moved = _keep_only(data, moved, used)
            fixes = finish(model, spec)
            _point_to_data(model, data, moved)
            onnx.save(model, str(target))
            del model
            traced = time.perf_counter()
            outs = OnnxRuntimeGraph(target)(*inputs)
        except OnnxUnavailable:
            raise
        except Exception as err:  # onnxruntime refused the graph (shape inference, an unknown op)
            raise OnnxUnavailable(f"onnxruntime cannot run the exported graph: {str(err).strip().splitlines()[0]}") \
                from None
        # the MindIR check runs while the cell's weights are still out: a full-size UNet is then in memory
        # once (the MindIR graph's) and not twice
        expected = load_graph_cell(mindir)[0](*[ms.Tensor(a) for a in inputs])
    finally:
        _weights_back(cell, data, moved)
        cell.set_train(training)
    expected = expected if isinstance(expected, (tuple, list)) else (expected,)
    errors = [rel_l2(o, e.asnumpy()) for o, e in zip(outs, expected)]
    tolerance = max(spec.tolerance, ONNX_TOLERANCE)
    if len(outs) != len(expected) or max(errors) > tolerance or not all(np.isfinite(errors)):
        raise OnnxUnavailable(f"onnxruntime's output differs from the MindIR graph on the dummy inputs "
                              f"(relative L2 {max(errors):.3g} > tolerance {tolerance})")
    return {"file": target.name, "files": [target.name, data.name], "rel_l2_vs_mindir": errors,
            "tolerance": tolerance, **fixes, "export_seconds": round(traced - start, 3),
            "check_seconds": round(time.perf_counter() - traced, 3)}
