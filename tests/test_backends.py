"""Backend selection and the MindSpore Lite adapter.

The mindspore-lite wheel is not published on PyPI for this platform, so the Lite adapter is
checked against a stand-in module that records the calls the adapter makes (the interface of
mindspore_lite.Model: build_from_file, get_inputs, set_data_from_numpy, predict). The MindSpore
backend itself runs in every pipeline test."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from video_aot.runtime import backends


class _FakeTensor:
    def __init__(self):
        self.data = None

    def set_data_from_numpy(self, array):
        self.data = array

    def get_data_to_numpy(self):
        return self.data


def _fake_lite(calls):
    module = types.ModuleType("mindspore_lite")

    class Context:
        def __init__(self):
            self.target = None

    class Model:
        def build_from_file(self, path, model_type, context):
            calls.append(("build", path, model_type, tuple(context.target)))
            self.inputs = [_FakeTensor(), _FakeTensor()]

        def get_inputs(self):
            return self.inputs

        def predict(self, inputs):
            out = _FakeTensor()
            out.set_data_from_numpy(inputs[0].data + inputs[1].data)
            return [out]

    module.Context = Context
    module.Model = Model
    module.ModelType = types.SimpleNamespace(MINDIR="MINDIR")
    return module


def test_lite_adapter_feeds_inputs_and_reads_outputs(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setitem(sys.modules, "mindspore_lite", _fake_lite(calls))
    assert backends.lite_available()
    backend = backends.make_backend(None)  # Lite is preferred when importable
    assert backend.name == "lite"
    graph = backend.load(tmp_path / "unet.mindir")
    (out,) = graph(np.ones((2, 3), np.float32), np.full((2, 3), 2.0, np.float32))
    np.testing.assert_array_equal(out, np.full((2, 3), 3.0, np.float32))
    assert calls == [("build", str(tmp_path / "unet.mindir"), "MINDIR", ("cpu",))]


def test_mindspore_is_the_fallback_and_names_are_checked(monkeypatch):
    monkeypatch.setitem(sys.modules, "mindspore_lite", None)  # import fails
    assert not backends.lite_available()
    assert backends.make_backend(None).name == "mindspore"
    with pytest.raises(ValueError, match="unknown backend 'onnx'.*mindspore.*lite"):
        backends.make_backend("onnx")
