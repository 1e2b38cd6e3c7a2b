"""The pipeline tests every family joins (as diffusers' PipelineTesterMixin): ``latents=`` parity with
diffusers (on the MindIR graphs and on onnxruntime: the case's export must hold ONNX files), generate-video,
a server request, and bad inputs. A family's test module subclasses
``PipelineSuite`` and provides one module fixture, ``case``, returning a ``SuiteCase``:

    @pytest.fixture(scope="module")
    def case(pipelines, snapshot):
        return SuiteCase(pipe=..., export_dir=..., inputs={...}, cli_args=[...],
                         reference=lambda inputs, latents: diffusers_frames)


    class TestSuite(PipelineSuite):
        pass
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import pytest

PARITY_TOLERANCE = 1e-3  # max abs difference of [0, 1] frames against diffusers
# an fp16 export against diffusers' fp32 frames: half-precision rounding through every graph
# (fp16 keeps ~3 decimal digits; the networks' norms, softmax and rotary stay in fp32)
FP16_TOLERANCE = 2e-2


@dataclass
class SuiteCase:
    pipe: object  # the loaded pipeline
    export_dir: str
    inputs: dict  # the smallest call: prompt and/or image, 2 steps, a seed
    cli_args: list  # the same for generate-video, after EXPORT --out FILE
    # (inputs, latents) -> diffusers' frames [B, F, H, W, 3] in [0, 1] for the same call and latents
    reference: Callable
    latents_shape: Optional[tuple] = None  # default: (batch,) + the manifest's latent_shape
    tolerance: float = PARITY_TOLERANCE
    # what diffusers' callback_on_step_end may see and replace in this pipeline; None: the pipeline has
    # diffusers' older callback(step, timestep, latents), or none
    callback_inputs: Optional[tuple] = ("latents",)
    frames_argument: str = "num_frames"  # __call__'s frame count (Text2Video-Zero: video_length)
    fp16_tolerance: float = FP16_TOLERANCE
    extra: dict = field(default_factory=dict)


def _suite_latents(case) -> np.ndarray:
    pipe = case.pipe
    shape = case.latents_shape or (pipe.shapes.get("batch", 1),) + tuple(pipe.manifest["latent_shape"])
    return np.random.default_rng(7).standard_normal(shape).astype(np.float32)


def _latents_and_frames(case):
    """The suite's latents and our frames for the plain call, computed once per case (the parity and
    the step-callback tests both need them)."""
    if "plain" not in case.extra:
        latents = _suite_latents(case)
        frames = np.asarray(case.pipe(**case.inputs, latents=latents, output_type="np").frames, np.float32)
        case.extra["plain"] = (latents, frames)
    return case.extra["plain"]


_FP16_CHILD = """
import pickle, sys
import numpy as np
from video_aot.export.run import export_model
from video_aot.runtime import load_pipeline
job = pickle.loads(open(sys.argv[1], "rb").read())
out = export_model(job["model"], job["out"], weights=job["weights"], random_weights=job["random_weights"],
                   log=lambda *a: None, onnx=False, **job["options"])
pipe = load_pipeline(out, backend="mindspore", pipeline=job["pipeline"])
assert pipe.manifest["dtype"] == "fp16", pipe.manifest["dtype"]
np.save(job["result"], np.asarray(pipe(**job["inputs"], latents=job["latents"], output_type="np").frames))
"""


def _reference_frames(case):
    """diffusers' frames for the plain call with the suite's latents, computed once per case."""
    if "reference" not in case.extra:
        latents, _ = _latents_and_frames(case)
        case.extra["reference"] = np.asarray(case.reference(case.inputs, latents), np.float32)
    return case.extra["reference"]


class PipelineSuite:
    @pytest.fixture(scope="class")
    def fp16_export(self, case, tmp_path_factory):
        """The same export replayed from its manifest with dtype fp16, exported and run on the suite's
        plain call in a child process (MindSpore never gives a loaded graph's memory back,
        benchmarks/NOTES.md, and the suite's one process must stay within 24 GB). The first parity test
        starts it, so that its export (one core) overlaps the suite's other tests; the fp16 test, the
        class's last, waits for it."""
        import pickle
        import subprocess
        import sys

        folder = tmp_path_factory.mktemp("fp16")
        manifest = case.pipe.manifest
        source = manifest["source"]
        job = {"model": source["model"], "out": str(folder / "fp16"), "result": str(folder / "frames.npy"),
               "weights": None if source.get("weights") in (None, "random") else source["weights"],
               "random_weights": source.get("weights") == "random", "pipeline": type(case.pipe).__name__,
               "options": {**manifest["export_options"], "dtype": "fp16"}, "inputs": case.inputs,
               "latents": _suite_latents(case)}
        (folder / "job.pkl").write_bytes(pickle.dumps(job))  # the test's own inputs, not model weights
        with open(folder / "stderr.txt", "w") as err:
            proc = subprocess.Popen([sys.executable, "-c", _FP16_CHILD, str(folder / "job.pkl")],
                                    stdout=subprocess.DEVNULL, stderr=err)
        try:
            yield proc, folder
        finally:
            if proc.poll() is None:  # the fp16 test was not run
                proc.kill()
                proc.wait()

    # ------------------------------------------------------------------ parity
    @pytest.mark.usefixtures("fp16_export")  # starts the fp16 child, which the last test waits for
    def test_latents_parity_with_diffusers(self, case):
        pipe = case.pipe
        latents, ours = _latents_and_frames(case)
        ref = _reference_frames(case)
        assert ours.shape == ref.shape
        err = float(np.abs(ours - ref).max())
        print(f"{type(pipe).__name__}: latents= parity max abs {err:.2e}")
        assert err <= case.tolerance

    def test_onnxruntime_parity_with_diffusers(self, case):
        """The case's export was made with ONNX files (export-model's default), one for every graph, and
        runs on onnxruntime, the CPU's default backend: the plain call's frames match diffusers' within the
        same tolerance as the MindIR graphs'."""
        from pathlib import Path

        from video_aot.runtime import load_pipeline

        pipe = load_pipeline(case.export_dir, backend="onnxruntime", pipeline=type(case.pipe).__name__)
        assert pipe.manifest.get("onnx_unavailable") == {}
        assert {Path(graph.fn.path).suffix for graph in pipe.graphs.values()} == {".onnx"}
        latents, mindir = _latents_and_frames(case)
        ours = np.asarray(pipe(**case.inputs, latents=latents, output_type="np").frames, np.float32)
        err = float(np.abs(ours - _reference_frames(case)).max())
        print(f"{type(pipe).__name__} on onnxruntime: latents= parity max abs {err:.2e}, "
              f"against the MindIR graphs {float(np.abs(ours - mindir).max()):.2e}")
        assert err <= case.tolerance

    def test_step_callback_matches_diffusers(self, case):
        """callback_on_step_end replaces the latents after the first step and halves the prompt
        embeddings (where offered) at every step; the frames still match diffusers' under the same
        callback, and differ from the plain call's."""
        import inspect

        takes = "callback_on_step_end" in inspect.signature(type(case.pipe).__call__).parameters
        if case.callback_inputs is None:
            assert not takes, "the pipeline takes callback_on_step_end: give the case its callback_inputs"
            return
        assert takes

        def callback(pipe, i, t, kwargs):
            out = dict(kwargs)
            if "prompt_embeds" in out:
                out["prompt_embeds"] = kwargs["prompt_embeds"] * 0.5
            if i == 0:
                out["latents"] = kwargs["latents"] * 0.9
            return out

        pipe = case.pipe
        latents, plain = _latents_and_frames(case)
        inputs = {**case.inputs, "callback_on_step_end": callback,
                  "callback_on_step_end_tensor_inputs": list(case.callback_inputs)}
        ours = np.asarray(pipe(**inputs, latents=latents, output_type="np").frames, np.float32)
        ref = np.asarray(case.reference(inputs, latents), np.float32)
        err = float(np.abs(ours - ref).max())
        print(f"{type(pipe).__name__}: step callback parity max abs {err:.2e}")
        assert err <= case.tolerance
        assert float(np.abs(ours - plain).max()) > case.tolerance

    # ------------------------------------------------------------------ generate-video
    def test_cli_writes_a_video(self, case, tmp_path):
        from video_aot.runtime.cli import main
        from video_aot.runtime.video_io import read_video

        out = tmp_path / "out.mp4"
        assert main([case.export_dir, "--out", str(out), "--backend", "mindspore", *case.cli_args]) == 0
        video, _ = read_video(out)
        shapes = case.pipe.shapes
        assert video.shape[1:] == (shapes["height"], shapes["width"], 3)

    def test_cli_refuses_an_unexported_frame_count(self, case, tmp_path, capsys):
        from video_aot.runtime.cli import main

        frames = case.pipe.shapes[case.frames_argument] + 8
        flag = "--" + case.frames_argument.replace("_", "-")
        assert main([case.export_dir, "--out", str(tmp_path / "x.mp4"), "--backend", "mindspore", *case.cli_args,
                     flag, str(frames)]) == 2
        assert case.frames_argument in capsys.readouterr().err
        assert not (tmp_path / "x.mp4").exists()

    @pytest.mark.parametrize("out", ["missing-folder/out.mp4", "out.avi"])
    def test_cli_checks_the_output_before_any_graph_runs(self, case, tmp_path, monkeypatch, capsys, out):
        import video_aot.runtime as runtime
        from video_aot.runtime.cli import main

        def never(*args, **kwargs):
            raise AssertionError("the pipeline was loaded before the output path was checked")

        monkeypatch.setattr(runtime, "load_pipeline", never)
        assert main([case.export_dir, "--out", str(tmp_path / out), *case.cli_args]) == 2
        assert "--out" in capsys.readouterr().err

    def test_cli_defaults_are_the_pipelines(self, case):
        """Every flag generate-video builds from __call__ is left to the pipeline's own default."""
        import inspect

        from video_aot.runtime.cli import build_parser, call_flags

        parser, cls, _ = build_parser([case.export_dir, "--out", "x.mp4"])
        assert cls is type(case.pipe)
        args = parser.parse_args([case.export_dir, "--out", "x.mp4"] + case.cli_args)
        given = {name for name, _, _ in call_flags(cls) if hasattr(args, name)}
        signature = inspect.signature(cls.__call__).parameters
        assert given <= set(signature)
        without_steps = [a for k, a in enumerate(case.cli_args)
                         if a != "--steps" and (k == 0 or case.cli_args[k - 1] != "--steps")]
        args = parser.parse_args([case.export_dir, "--out", "x.mp4"] + without_steps)
        assert "num_inference_steps" in signature and not hasattr(args, "num_inference_steps")

    # ------------------------------------------------------------------ requests over a service
    def test_server_request_validation(self, case):
        pipe = case.pipe
        example = pipe.example_request()
        kwargs = pipe.validate_request(example)
        assert kwargs["num_inference_steps"] == example["num_inference_steps"] >= 1
        with pytest.raises(ValueError, match="unknown field"):
            pipe.validate_request({**pipe.example_request(), "not_an_argument": 1})
        with pytest.raises(ValueError):
            pipe.validate_request({**pipe.example_request(), "num_inference_steps": 0})

    # ------------------------------------------------------------------ bad inputs
    def test_bad_latents_and_steps_are_refused(self, case):
        from video_aot.runtime import ShapeMismatch

        with pytest.raises(ShapeMismatch):
            case.pipe(**case.inputs, latents=np.zeros((1, 1, 1), np.float32), output_type="np")
        with pytest.raises(ValueError, match="num_inference_steps"):
            case.pipe(**{**case.inputs, "num_inference_steps": 0}, output_type="np")

    # ------------------------------------------------------------------ fp16 (last: its child ran meanwhile)
    def test_fp16_export_matches_diffusers_within_half_precision(self, case, fp16_export):
        """The fp16 export (graph inputs and outputs stay float32): the plain call's frames stay within
        half-precision rounding of diffusers' fp32 frames, and the fp16 graphs really are fp16 (they
        differ from the fp32 export's frames)."""
        proc, folder = fp16_export
        assert proc.wait(timeout=1800) == 0, (folder / "stderr.txt").read_text()[-4000:]
        _, fp32 = _latents_and_frames(case)
        ours = np.load(folder / "frames.npy")
        assert ours.dtype == np.float32 and ours.shape == fp32.shape
        err = float(np.abs(ours - _reference_frames(case)).max())
        print(f"{type(case.pipe).__name__}: fp16 export against diffusers fp32 max abs {err:.2e}")
        assert err <= case.fp16_tolerance
        assert float(np.abs(ours - fp32).max()) > 0.0
