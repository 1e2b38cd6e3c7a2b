"""What every exported pipeline shares: loading its graphs through a backend, checking a
request against the static shapes, the per-stage timings, progress and step callbacks."""
from __future__ import annotations

import contextlib
import inspect
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .manifest import BoundGraph, Export, ExportInvalid, ShapeMismatch, mindir_input_shapes
from .vae import run_chunks


@dataclass
class VideoOutput:
    frames: Any


class Cancelled(Exception):
    """Raised from a step callback to stop a generation at the next step boundary."""


class ExportedPipeline:
    family: str = ""
    graph_names: tuple = ()

    def __init__(self, export: Export, backend):
        self.export = export
        self.manifest = export.manifest
        self.backend = backend
        self.graphs = {}
        # the largest graph first: MindSpore's ms.load of a single-file MindIR (under 1 GB of weights; larger
        # graphs are split and read into the graph one weight at a time, backends.load_graph_cell) holds its
        # weights twice until it returns, and loaded first that transient does not come on top of the others
        present = [name for name in self.graph_names if name in self.manifest["graphs"]]
        for name in sorted(present, key=self._graph_bytes, reverse=True):
            self.load_graph(name)
        self.graphs = {name: self.graphs[name] for name in present}  # listed in the pipeline's order
        self.timings = defaultdict(list)  # stage -> seconds per call, for benchmarks and metrics
        self._progress_config = {}

    def _graph_bytes(self, name: str) -> int:
        root = Path(self.export.root)
        return sum((root / f).stat().st_size for f in self.manifest["graphs"][name].get("files", ())
                   if (root / f).is_file())

    def load_graph(self, name: str):
        """Load graph ``name`` through the backend, bound to its manifest entry (named inputs, shapes
        checked). The traced input shapes in the MindIR must be the ones the manifest declares."""
        entry = self.manifest.graph_entries[name]
        artifact = getattr(self.backend, "artifact", "mindir")  # the onnxruntime backend loads the ONNX files
        path = self.export.graph_path(name, artifact)
        declared = [tuple(t.shape) for t in entry.inputs]
        # a MindIR's shapes are read from the file before it is loaded; an ONNX session reports its own
        fn = None if artifact == "mindir" else self.backend.load(path)
        traced = mindir_input_shapes(path) if fn is None else getattr(fn, "input_shapes", None)
        if traced is not None and traced != declared:
            raise ExportInvalid(f"{self.export.root}: the manifest declares graph {name}'s inputs as {declared} but "
                                f"{path.name} was traced with {traced}; the manifest was edited - re-export")
        self.graphs[name] = BoundGraph(entry, fn if fn is not None else self.backend.load(path))
        return self.graphs[name]

    @classmethod
    def check_export(cls, export: Export):
        """Refuse an export this pipeline cannot run (a graph it needs is missing, say)."""

    # ------------------------------------------------------------------ shapes
    @property
    def shapes(self) -> dict:
        return self.manifest["shapes"]

    def exported_defaults(self, **given):
        """Each argument left at None takes the exported value (diffusers takes these defaults
        from the unet config); the others are returned as given, to be checked."""
        return tuple(self.shapes[k] if v is None else v for k, v in given.items())

    def check_shapes(self, **request):
        """Refuse a request that does not fit the export, naming what was exported."""
        wrong = {k: v for k, v in request.items() if k in self.shapes and v != self.shapes[k]}
        if wrong:
            asked = ", ".join(f"{k}={v}" for k, v in wrong.items())
            raise ShapeMismatch(
                f"this export was built for {self.export.describe_shapes()}; the request asks for {asked}. "
                f"Static shapes are fixed at export time: re-export with export-model to serve other shapes."
            )

    @staticmethod
    def check_number(name, value, minimum=None, maximum=None, integer=False):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if integer and int(value) != value:
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
        if maximum is not None and value > maximum:
            raise ValueError(f"{name} must be <= {maximum}, got {value!r}")

    @staticmethod
    def check_latents(latents, shape) -> np.ndarray:
        latents = np.asarray(latents, dtype=np.float32)
        if latents.shape != tuple(shape):
            raise ShapeMismatch(f"unexpected latents shape {latents.shape}, expected {tuple(shape)}")
        return latents

    def check_latent_frames(self, num_frames, latent_frames: int, temporal: int):
        """For VAEs that compress time: every ``num_frames`` giving the exported latent-frame count
        ((num_frames - 1) // temporal + 1, as diffusers computes it) is the same static shape; any
        other was not exported."""
        self.check_number("num_frames", num_frames, minimum=1, integer=True)
        got = (int(num_frames) - 1) // temporal + 1
        if got != latent_frames:
            lo = (latent_frames - 1) * temporal + 1
            raise ShapeMismatch(
                f"num_frames={num_frames} gives {got} latent frames, but this export was built for {latent_frames} "
                f"latent frames (num_frames {lo} to {lo + temporal - 1}); exported shapes: "
                f"{self.export.describe_shapes()}. Static shapes are fixed at export time: re-export with "
                f"export-model --frames {num_frames}.")

    def initial_latents(self, shape, latents, rng) -> np.ndarray:
        """diffusers' prepare_latents before scaling: ``latents=`` checked against ``shape``, or
        standard normal noise of that shape drawn from ``rng`` in float32."""
        if latents is None:
            return rng.standard_normal(shape, dtype=np.float32)
        return self.check_latents(latents, shape)

    @staticmethod
    def check_callback_inputs(names, allowed):
        bad = [n for n in names if n not in allowed]
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs {bad} are not available; choose from {list(allowed)}")

    @staticmethod
    def make_generator(generator, seed) -> np.random.Generator:
        if generator is not None and seed is not None:
            raise ValueError("pass either generator= or seed=, not both")
        if generator is not None:
            if not isinstance(generator, np.random.Generator):
                raise ValueError(f"generator must be a numpy np.random.Generator, got {type(generator).__name__}")
            return generator
        return np.random.default_rng(seed)

    # ------------------------------------------------------------------ loop helpers
    @contextlib.contextmanager
    def timed(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage].append(time.perf_counter() - start)

    def set_progress_bar_config(self, **kwargs):
        self._progress_config = kwargs

    def progress(self, iterable):
        from tqdm.auto import tqdm

        return tqdm(iterable, **{"desc": "denoising", **self._progress_config})

    def denoise(self, sched, plan, latents, predict, *, start: int = 0, generator=None, eta=None, on_step=None,
                step_view=None):
        """The one denoising loop, diffusers' ``for i, t in enumerate(timesteps)`` from plan index
        ``start`` (img2img and video2video start later).

        predict(model_in, t, i) -> the step graph's output, in the layout of ``latents``.
        on_step(i, t, latents) -> latents: the pipeline's callback, adapted to its diffusers style.
        step_view: (to_step, from_step), the layout the scheduler steps on when diffusers reshapes
        before ``scheduler.step`` (the order of any noise the step draws depends on it).
        generator / eta go to the scheduler's step when it takes them (diffusers' prepare_extra_step_kwargs)."""
        params = set(inspect.signature(sched.step).parameters)
        kwargs = {k: v for k, v in (("generator", generator), ("eta", eta)) if k in params and v is not None}
        to_step, from_step = step_view or (None, None)
        state = None  # multistep history: the scheduler returns it, the loop hands it back
        for i in self.progress(range(start, len(plan.timesteps))):
            t = plan.timesteps[i]
            with self.timed("denoise_step"):
                model_in = sched.scale_model_input(plan, i, latents)
                with self.timed("unet"):
                    model_output = predict(model_in, t, i)
                if to_step is None:
                    latents, state = sched.step(plan, i, latents, model_output, state, **kwargs)
                else:
                    stepped, state = sched.step(plan, i, to_step(latents), to_step(model_output), state, **kwargs)
                    latents = from_step(stepped)
                latents = latents.astype(np.float32, copy=False)
            if on_step is not None:
                latents = on_step(i, t, latents)
        return latents

    def step_callback(self, callback, i, t, tensors: dict) -> dict:
        if callback is None:
            return tensors
        out = callback(self, i, t, tensors)
        return out if isinstance(out, dict) else tensors

    def step_hook(self, callback, names=("latents",), tensors: dict | None = None, offset: int = 0):
        """diffusers' ``callback_on_step_end(pipe, i, t, callback_kwargs)`` as :meth:`denoise`'s
        ``on_step``. The callback sees ``names`` (``latents`` and keys of ``tensors``); a tensor it
        returns under a key of ``tensors`` replaces that entry (a loop that reads it from there sees
        the change, as diffusers' does), and returned latents must keep their shape. ``offset``: the
        first step's index in the plan (strength), so that the callback counts from 0."""
        tensors = {} if tensors is None else tensors

        def on_step(i, t, x):
            if callback is None:
                return x
            out = self.step_callback(callback, i - offset, t, {k: x if k == "latents" else tensors[k] for k in names})
            for k in tensors:
                if k in out:
                    tensors[k] = np.asarray(out[k], np.float32)
            return self.check_latents(out.get("latents", x), x.shape)

        return on_step

    @staticmethod
    def legacy_step_hook(callback, callback_steps: int, offset: int = 0):
        """diffusers' older ``callback(step, timestep, latents)``, every ``callback_steps`` steps."""
        def on_step(i, t, x):
            if callback is not None and (i - offset) % callback_steps == 0:
                callback(i - offset, t, x)
            return x

        return on_step

    def decode_chunks(self, latents: np.ndarray, chunk: int) -> np.ndarray:
        """latents [N, C, h, w] -> frames [N, 3, H, W], chunk by chunk; the last, shorter chunk
        uses the ``vae_decoder_tail`` graph exported for exactly that length."""
        def decode(part, tail):
            with self.timed("vae_decode"):
                return self.graphs["vae_decoder_tail" if tail else "vae_decoder"](part)[0]

        return run_chunks(decode, latents, chunk)[0]

    # ------------------------------------------------------------------ requests over a service
    # A service builds its request checks from these, so a family needs no server code.
    image_inputs: tuple = ("image",)  # __call__ arguments that take an image
    required_inputs: tuple | None = None  # None: arguments with no default, and `prompt` (see request.py)
    request_limits: dict = {}  # name -> (minimum, maximum), over request.REQUEST_LIMITS
    scheduler_names: tuple | None = None  # the scheduler= names a request may give (None: every one)

    def request_schema(self) -> dict:
        """The arguments a client may send: name -> {"type", "required" | "default", "minimum",
        "maximum", "enum"}, read from the signature of __call__ and the exported shapes."""
        from .request import request_schema

        return request_schema(self)

    def validate_request(self, request: dict) -> dict:
        """Check a client's request before any graph runs; returns the kwargs for __call__ or raises
        request.RequestInvalid (a ValueError) naming the field and the allowed values."""
        from .request import validate_request

        return validate_request(self, request)

    def check_request(self, kwargs: dict):
        """Family hook for further cheap checks of a validated request; raise ValueError to refuse it."""

    def example_request(self) -> dict:
        """The smallest valid request (one step); used for warm-up calls."""
        from .request import example_request

        return example_request(self)
