"""One backend's measurements, run in a process of its own (``python -m
video_aot.benchmarks.worker KIND CONFIG.json OUT.json``) so that each backend's peak memory is
its own and a multi-GB model is freed before the next one loads.

Kinds (every one drives a family only through its export manifest, its export plan and its
runtime pipeline, so a new family needs no code here):
  export    export_model() for the tier's snapshot and shapes: compile time and peak memory.
  exported  the exported MindIR graphs through the runtime pipeline (load_pipeline), as users run it.
  onnxruntime  the same pipeline over the export's ONNX files (export-model --onnx) on onnxruntime.
  pynative  the same runtime pipeline over the plan's cells run eagerly in PyNative mode (what
            mindone.diffusers runs by default); also counts the FLOPs of every stage call.
  torch     diffusers' pipeline loaded from the same snapshot, in eager mode on the CPU; the
            stages are timed by wrapping the components' methods (STAGE_HOOKS).
"""
from __future__ import annotations

import inspect
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .measure import FlopCounter, StageRecorder, peak_rss_bytes, step_overhead, summary

MB = 1024 * 1024

# runtime stage name -> diffusers component methods that do the same work (first present wins)
STAGE_HOOKS = {
    "image_encode": (("image_encoder", "forward"),),
    "text_encode": (("text_encoder", "forward"),),
    "vae_encode": (("vae", "encode"),),
    "unet": (("unet", "forward"), ("transformer", "forward")),
    "vae_decode": (("vae", "decode"),),
}
MEASURED_STAGES = ("image_encode", "text_encode", "vae_encode", "denoise_step", "unet", "vae_decode", "end_to_end")


# ----------------------------------------------------------------------------- requests
def build_request(call, shapes: dict, steps: int, seed: int = 0) -> dict:
    """The keyword arguments for one generation, for any pipeline whose ``__call__`` follows
    diffusers' names (image / prompt, height, width, num_frames, num_inference_steps ...).
    Arguments the signature does not take are left out."""
    from PIL import Image

    params = inspect.signature(call).parameters
    height, width = shapes["height"], shapes["width"]
    frames = shapes.get("num_frames", shapes.get("frames", shapes.get("video_length")))
    rng = np.random.default_rng(seed)
    candidates = {
        "image": Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)),
        "prompt": "a red fox running through fresh snow, cinematic lighting",
        "height": height,
        "width": width,
        "num_frames": frames,
        "video_length": frames,  # Text2Video-Zero's name for it
        "num_inference_steps": steps,
        # Text2Video-Zero warps at step t0 and re-noises to t1, both counted within the steps (t0 < t1 < steps)
        "t0": max(steps - 2, 0),
        "t1": steps - 1,
        "decode_chunk_size": shapes.get("decode_chunk_size"),
        "output_type": "np",
    }
    return {k: v for k, v in candidates.items() if k in params and v is not None}


# ----------------------------------------------------------------------------- generation loop
def run_generations(call, request, recorder: StageRecorder, warmup: int, repeats: int,
                    flops: FlopCounter | None = None) -> dict:
    """``warmup`` generations (the first one gives the first-call figures), then ``repeats``
    measured ones. Returns the stage figures."""
    for i in range(warmup + repeats):
        recorder.tag = "warmup" if i < warmup else "measured"
        if flops is not None and i == 0:
            with flops, recorder.stage("end_to_end"):
                call(**request)
        else:
            with recorder.stage("end_to_end"):
                call(**request)
    warm = recorder.stages("warmup")
    measured = recorder.stages("measured")
    out = {
        "first_call": {stage: values[0] for stage, values in warm.items()},
        "stages": {stage: summary(values) for stage, values in measured.items()},
        "samples": measured,  # raw seconds per stage: bench-model pools them over rounds
    }
    out.update(step_overhead(measured.get("denoise_step", []), measured.get("unet", [])))
    if flops is not None:
        out["flops"] = {stage: int(np.median(calls)) for stage, calls in flops.calls.items() if calls}
    return out


def _attach_recorder(pipe, recorder: StageRecorder):
    """Route the runtime pipeline's own ``timed(stage)`` blocks through ``recorder`` too."""
    original = pipe.timed

    import contextlib

    @contextlib.contextmanager
    def timed(stage):
        with original(stage), recorder.stage(stage):
            yield

    pipe.timed = timed


# ----------------------------------------------------------------------------- matmul peak
def mindspore_matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    import mindspore as ms
    from mindspore import nn, ops

    class MatMul(nn.Cell):
        def construct(self, a, b):
            return ops.matmul(a, b)

    rng = np.random.default_rng(0)
    a = ms.Tensor(rng.standard_normal((n, n)).astype(np.float32))
    b = ms.Tensor(rng.standard_normal((n, n)).astype(np.float32))
    fn = MatMul()  # compiled: the worker runs in GRAPH_MODE
    fn(a, b).asnumpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(a, b).asnumpy()
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / min(times) / 1e9


def torch_matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / min(times) / 1e9


# ----------------------------------------------------------------------------- kinds
def run_export(config: dict) -> dict:
    from video_aot.export.run import export_model

    start = time.perf_counter()
    out = export_model(config["model"], config["export_dir"], frames=config["frames"], height=config["height"],
                       width=config["width"], batch=config.get("batch", 1), dtype=config.get("dtype", "fp32"),
                       decode_chunk_size=config.get("decode_chunk_size"), force=config.get("force", True),
                       onnx=config.get("onnx", False), log=lambda *a: print(*a, file=sys.stderr))
    seconds = time.perf_counter() - start
    manifest = json.loads((Path(out) / "manifest.json").read_text())
    return {"seconds": seconds,
            "graphs": {name: g.get("export_seconds") for name, g in manifest["graphs"].items()},
            "peak_rss_mb": round(peak_rss_bytes() / MB, 1)}


def _mindspore_context(config: dict, mode: str):
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE, device_target="CPU")


def run_exported(config: dict, backend: str = "mindspore") -> dict:
    from video_aot.runtime import load_pipeline
    from video_aot.runtime.manifest import verify_export

    if backend == "mindspore":
        _mindspore_context(config, "graph")
    recorder = _new_recorder()
    start = time.perf_counter()
    verify_export(config["export_dir"], check_sums=True, artifact="onnx" if backend == "onnxruntime" else "mindir")
    verified = time.perf_counter()
    pipe = load_pipeline(config["export_dir"], backend=backend, check_sums=False,
                         **config.get("backend_options", {}))
    loaded = time.perf_counter()
    recorder.add("load", start, loaded, timed=False)
    pipe.set_progress_bar_config(disable=True)
    _attach_recorder(pipe, recorder)
    request = build_request(pipe.__call__, pipe.shapes, config["steps"])
    out = run_generations(pipe, request, recorder, config["warmup"], config["repeats"])
    out["load_seconds"] = loaded - start
    out["verify_seconds"] = verified - start
    out["process_peak_rss_mb"] = round(peak_rss_bytes() / MB, 1)
    if config.get("matmul_peak", True) and backend == "mindspore":
        out["matmul_gflops"] = mindspore_matmul_gflops()
    return out


def run_onnxruntime(config: dict) -> dict:
    return run_exported(config, backend="onnxruntime")


class PlanBackend:
    """A runtime backend whose graphs are the export plan's own cells, run eagerly (PyNative):
    the same networks and weights as the exported MindIR, without the graph compiler."""

    name = "pynative"

    def __init__(self, manifest: dict):
        from video_aot.export.run import plan_from_manifest

        graphs = plan_from_manifest(manifest)
        self.factories = {spec.name: factory for spec, factory in graphs}
        self.files = {g["file"]: name for name, g in manifest["graphs"].items()}

    def load(self, path):
        import mindspore as ms

        cell = self.factories[self.files[Path(path).name]]()
        cell.set_train(False)

        def call(*arrays):
            outs = cell(*[ms.Tensor(np.ascontiguousarray(a)) for a in arrays])
            outs = outs if isinstance(outs, (tuple, list)) else (outs,)
            return tuple(o.asnumpy() for o in outs)

        return call


def run_pynative(config: dict) -> dict:
    from video_aot.runtime import load_pipeline
    from video_aot.runtime.manifest import verify_export

    _mindspore_context(config, "pynative")
    recorder = _new_recorder()
    flops = FlopCounter(recorder) if config.get("count_flops", True) else None
    if flops is not None:
        recorder.listeners.append(lambda stage: flops.stage_done(stage) if flops._saved else None)
    start = time.perf_counter()
    export = verify_export(config["export_dir"], check_sums=False)
    pipe = load_pipeline(config["export_dir"], backend=PlanBackend(export.manifest), check_sums=False)
    loaded = time.perf_counter()
    recorder.add("load", start, loaded, timed=False)
    pipe.set_progress_bar_config(disable=True)
    _attach_recorder(pipe, recorder)
    request = build_request(pipe.__call__, pipe.shapes, config["steps"])
    out = run_generations(pipe, request, recorder, config["warmup"], config["repeats"], flops)
    out["load_seconds"] = loaded - start
    out["process_peak_rss_mb"] = round(peak_rss_bytes() / MB, 1)
    return out


def _hook(obj, method: str, recorder: StageRecorder, stage: str):
    original = getattr(obj, method)

    def timed(*args, **kwargs):
        with recorder.stage(stage):
            return original(*args, **kwargs)

    setattr(obj, method, timed)


def _components_without_weights(snapshot: Path) -> dict:
    """name -> None for model_index components the snapshot has no folder for (Text2Video-Zero's safety_checker
    and feature_extractor, which the generated snapshots leave out), or whose folder holds a config but no
    weights (the generated AnimateDiff snapshots keep the preset's motion_adapter/config.json while the motion
    modules live in unet/): diffusers would fail to load them; the pipelines take them as optional."""
    index = json.loads((snapshot / "model_index.json").read_text())
    weights = ("*.safetensors", "*.bin", "*.ckpt")

    def absent(name):
        folder = snapshot / name
        if not folder.is_dir():
            return True
        return (folder / "config.json").is_file() and not any(any(folder.glob(w)) for w in weights)

    return {name: None for name, value in index.items()
            if isinstance(value, list) and value[0] is not None and absent(name)}


def _transformers_compat(pipe):
    """diffusers 0.42's clip_skip paths (e.g. I2VGen-XL's encode_prompt, default clip_skip=1) read
    ``text_encoder.text_model.final_layer_norm``; transformers 5's CLIPTextModel holds
    ``final_layer_norm`` itself and has no ``text_model``. Alias it on any component that lacks it."""
    from types import SimpleNamespace

    for module in pipe.components.values():
        if hasattr(module, "final_layer_norm") and not hasattr(module, "text_model"):
            object.__setattr__(module, "text_model", SimpleNamespace(final_layer_norm=module.final_layer_norm))


def run_torch(config: dict) -> dict:
    import torch
    from diffusers import DiffusionPipeline

    manifest = json.loads((Path(config["export_dir"]) / "manifest.json").read_text())
    source = manifest["source"]
    if source.get("weights") in (None, "random"):
        raise RuntimeError("the torch baseline needs the export's weights, but it was exported with random weights "
                           "generated in MindSpore; export a snapshot with weights (the tiers do)")
    torch.set_grad_enabled(False)
    recorder = _new_recorder()
    start = time.perf_counter()
    pipe = DiffusionPipeline.from_pretrained(source["weights"], torch_dtype=torch.float32,
                                             **_components_without_weights(Path(source["weights"])))
    pipe.to("cpu")
    _transformers_compat(pipe)
    loaded = time.perf_counter()
    recorder.add("load", start, loaded, timed=False)
    pipe.set_progress_bar_config(disable=True)
    for stage, candidates in STAGE_HOOKS.items():
        for component, method in candidates:
            module = getattr(pipe, component, None)
            if module is not None and hasattr(module, method):
                _hook(module, method, recorder, stage)
                break
    request = build_request(pipe.__call__, manifest["shapes"], config["steps"])
    if "callback_on_step_end" in inspect.signature(pipe.__call__).parameters:
        # a denoising step runs from the end of the previous step (or the first UNet call) to this callback
        marks = {}

        def on_step_end(_pipe, i, _t, kwargs):
            now = time.perf_counter()
            begin = marks.get("last") if i > 0 else recorder.intervals["unet"][-1][0]
            recorder.add("denoise_step", begin, now)
            marks["last"] = now
            return {}

        request["callback_on_step_end"] = on_step_end
    out = run_generations(pipe, request, recorder, config["warmup"], config["repeats"])
    out["load_seconds"] = loaded - start
    out["process_peak_rss_mb"] = round(peak_rss_bytes() / MB, 1)
    if config.get("matmul_peak", True):
        out["matmul_gflops"] = torch_matmul_gflops()
    out["torch_threads"] = torch.get_num_threads()
    return out


recorder_holder = []  # the kind's StageRecorder, whose intervals go back to the parent


def _new_recorder() -> StageRecorder:
    recorder = StageRecorder()
    recorder_holder.append(recorder)
    return recorder


KINDS = {"export": run_export, "exported": run_exported, "pynative": run_pynative, "torch": run_torch,
         "onnxruntime": run_onnxruntime}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] not in KINDS:
        print(f"usage: python -m video_aot.benchmarks.worker {{{','.join(KINDS)}}} CONFIG.json OUT.json",
              file=sys.stderr)
        return 2
    kind, config_path, out_path = argv
    config = json.loads(Path(config_path).read_text())
    if config.get("compile_cache"):
        os.makedirs(config["compile_cache"], exist_ok=True)
        os.chdir(config["compile_cache"])  # graph-kernel fusion writes its kernels into the CWD
    recorder_holder.clear()
    result = KINDS[kind](config)
    result["kind"] = kind
    if recorder_holder:
        result["intervals"] = {stage: v for stage, v in recorder_holder[0].intervals.items()}
    tmp = Path(out_path).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
