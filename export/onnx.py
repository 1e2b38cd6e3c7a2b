"""ONNX artifacts of the exported graphs, for the onnxruntime backend (runtime/backends.py).

Each graph's cell is traced a second time with ``ms.export(..., file_format="ONNX")``; the same
network, the same static shapes. MindSpore 2.7.1's ONNX exporter needs three kinds of help:

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
import time
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import ops

from video_aot.runtime.backends import OnnxRuntimeGraph

from .graphs import GraphSpec, rel_l2

_SQRT = ops.sqrt
_ACOS = ops.acos


ONNX_TOLERANCE = 5e-3  # relative L2 of onnxruntime against the MindIR graph (fp32); see the module docstring


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


def trace_onnx(folder: Path, spec: GraphSpec, cell, mindir: Path) -> dict:
    """Write ``folder/NAME.onnx`` for ``cell`` and check it against the MindIR graph at ``mindir``.
    Returns the manifest's ``onnx`` entry for the graph; raises OnnxUnavailable with the reason."""
    from mindspore import nn

    target = folder / f"{spec.name}.onnx"
    inputs = spec.dummy_inputs()
    start = time.perf_counter()
    try:
        with exporter_ops():
            ms.export(cell, *[ms.Tensor(a) for a in inputs], file_name=str(folder / spec.name), file_format="ONNX")
    except Exception as err:  # the exporter's own message names the op it has no converter for
        target.unlink(missing_ok=True)
        raise OnnxUnavailable(f"MindSpore's ONNX exporter failed: {str(err).strip().splitlines()[0]}") from None
    import onnx

    try:
        model = onnx.load(str(target))
        fixes = finish(model, spec)
        onnx.save(model, str(target))
        del model
        traced = time.perf_counter()
        outs = OnnxRuntimeGraph(target)(*inputs)
    except OnnxUnavailable:
        target.unlink(missing_ok=True)
        raise
    except Exception as err:  # onnxruntime refused the graph (shape inference, an unknown op)
        target.unlink(missing_ok=True)
        raise OnnxUnavailable(f"onnxruntime cannot run the exported graph: {str(err).strip().splitlines()[0]}") \
            from None
    expected = nn.GraphCell(ms.load(str(mindir)))(*[ms.Tensor(a) for a in inputs])
    expected = expected if isinstance(expected, (tuple, list)) else (expected,)
    errors = [rel_l2(o, e.asnumpy()) for o, e in zip(outs, expected)]
    tolerance = max(spec.tolerance, ONNX_TOLERANCE)
    if len(outs) != len(expected) or max(errors) > tolerance or not all(np.isfinite(errors)):
        target.unlink(missing_ok=True)
        raise OnnxUnavailable(f"onnxruntime's output differs from the MindIR graph on the dummy inputs "
                              f"(relative L2 {max(errors):.3g} > tolerance {tolerance})")
    return {"file": target.name, "rel_l2_vs_mindir": errors, "tolerance": tolerance, **fixes,
            "export_seconds": round(traced - start, 3), "check_seconds": round(time.perf_counter() - traced, 3)}
