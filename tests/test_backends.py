"""Backend selection and the MindSpore Lite adapter.

The mindspore-lite wheel is not published on PyPI for this platform, so the Lite adapter is
checked against a stand-in module that records the calls the adapter makes (the interface of
mindspore_lite.Model: build_from_file, get_inputs, set_data_from_numpy, predict). The MindSpore
backend itself runs in every pipeline test."""
from __future__ import annotations

import os
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


def test_large_buffers_are_given_back_when_freed():
    """The onnxruntime backend has glibc serve every block of 1 MB or more with its own mapping: freed
    activations leave the process instead of staying in the heap. Run in a child process, since the
    setting is process-wide: 2 MB blocks, allocated together and freed, come back to the system."""
    import subprocess

    script = """
import ctypes, os, sys
from video_aot.runtime.backends import give_back_large_buffers
from video_aot.runtime.metrics import rss_bytes
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return rss_bytes()[0] >> 20
def churn():
    # a freed 20 MB mapping first: glibc then raises its threshold past 2 MB, unless it was fixed
    big = libc.malloc(20 << 20); ctypes.memset(big, 1, 20 << 20); libc.free(big)
    blocks = [libc.malloc(2 << 20) for _ in range(100)]
    for b in blocks:
        ctypes.memset(b, 1, 2 << 20)
    top = rss()
    for b in reversed(blocks[:-1]):  # the last one keeps the heap's top in place, as live data would
        libc.free(b)
    kept = rss() - (top - 200)
    libc.free(blocks[-1])
    return kept
if sys.argv[1] == "set":
    assert give_back_large_buffers()
print(churn())
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    kept = {mode: int(subprocess.run([sys.executable, "-c", script, mode], env=env, capture_output=True, text=True,
                                     check=True).stdout) for mode in ("default", "set")}
    assert kept["set"] <= 20, kept  # MB of the 200 freed still resident
    assert kept["default"] >= 150, kept  # glibc's default: the check above would pass without the setting
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    out = subprocess.run([sys.executable, "-c", "from video_aot.runtime.backends import give_back_large_buffers as g;"
                          "print(g())"], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # the user's own setting is left alone
