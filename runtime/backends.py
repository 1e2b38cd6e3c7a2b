"""Backends that load exported graphs and run them on numpy arrays.

A backend turns a MindIR file into a callable ``graph(*arrays) -> tuple of arrays``. The
MindSpore backend uses ``ms.load`` + ``nn.GraphCell``; the MindSpore Lite backend (when
``mindspore_lite`` is importable) builds a Lite model from the same file.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

BACKENDS = ("mindspore", "lite")


class MindSporeGraph:
    def __init__(self, path: Path):
        import mindspore as ms
        from mindspore import nn

        self.path = path
        self.cell = nn.GraphCell(ms.load(str(path)))
        self._ms = ms

    def __call__(self, *arrays):
        outs = self.cell(*[self._ms.Tensor(np.ascontiguousarray(a)) for a in arrays])
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        return tuple(o.asnumpy() for o in outs)


class MindSporeBackend:
    name = "mindspore"

    def __init__(self, device_target: str = "CPU", compile_cache: str | None = None, graph_kernel: bool = False):
        import mindspore as ms

        self.device_target = device_target
        ms.set_context(mode=ms.GRAPH_MODE, device_target=device_target)
        if graph_kernel:
            # graph-kernel fusion happens when the runtime compiles the loaded graph, not at export.
            ms.set_context(enable_graph_kernel=True)
        if compile_cache:
            os.makedirs(compile_cache, exist_ok=True)

    def load(self, path) -> MindSporeGraph:
        return MindSporeGraph(Path(path))


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


def lite_available() -> bool:
    try:
        import mindspore_lite  # noqa: F401
    except ImportError:
        return False
    return True


def make_backend(name: str | None = None, **kwargs):
    """``None`` picks MindSpore Lite when it is importable, else MindSpore."""
    if name is None:
        name = "lite" if lite_available() else "mindspore"
    if name == "mindspore":
        return MindSporeBackend(**kwargs)
    if name == "lite":
        return LiteBackend(**{k: v for k, v in kwargs.items() if k == "device_target"})
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
