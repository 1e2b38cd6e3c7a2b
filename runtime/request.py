"""What a pipeline accepts from a client that is not in the same process: a description of the
request read from the signature of ``__call__`` and the manifest's static shapes, and a check
of a request against it. Generic over families, so that a service needs no per-family code.

A family steers it with class attributes of its pipeline (see ``ExportedPipeline``):
``image_inputs`` (arguments that take an image), ``required_inputs`` and ``request_limits``.
"""
from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np

from .manifest import ShapeMismatch

# __call__ arguments a service never takes from a client: it owns the outputs, the callbacks and
# the random generator objects (a client passes ``seed``).
SERVER_OWNED = (
    "generator", "latents", "output_type", "return_dict", "num_videos_per_prompt",
    "callback_on_step_end", "callback_on_step_end_tensor_inputs", "callback", "callback_steps",
)

# Ranges of the usual diffusers arguments, as (minimum, maximum). A family extends or overrides
# them with its pipeline's ``request_limits``.
REQUEST_LIMITS = {
    "num_inference_steps": (1, 500),
    "guidance_scale": (0.0, 50.0),
    "min_guidance_scale": (0.0, 50.0),
    "max_guidance_scale": (0.0, 50.0),
    "noise_aug_strength": (0.0, 1.0),
    "motion_bucket_id": (0, 255),  # SVD's training range
    "fps": (1, 60),
    "seed": (0, 2**63 - 1),
    "eta": (0.0, 1.0),
    "strength": (0.0, 1.0),
}

# An integer argument without a range of its own must still fit the int64 the graphs and numpy take.
INT64_RANGE = (-(2**63), 2**63 - 1)

_JSON_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}


class RequestInvalid(ValueError):
    """A request that does not fit the pipeline or its export. ``field`` names the argument and
    ``allowed`` lists the valid values (or a {"minimum", "maximum"} range) when there is such a list."""

    def __init__(self, field: str | None, message: str, allowed: Any = None):
        super().__init__(message)
        self.field = field
        self.allowed = allowed


def _json_type(name: str, param: inspect.Parameter, image_inputs, names) -> str | None:
    """"integer", "number", "boolean", "string", "image", or None for arguments a JSON request
    cannot carry (arrays, generators, tensors)."""
    if name in image_inputs:
        return "image"
    annotation = param.annotation
    if annotation is inspect.Parameter.empty:
        default = param.default
        if default is None and f"{name}_embeds" in names:  # diffusers: prompt=None or prompt_embeds=
            return "string"
        if isinstance(default, bool):
            return "boolean"
        for py, js in ((int, "integer"), (float, "number"), (str, "string")):
            if isinstance(default, py):
                return js
        return None
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    text = text.replace("Optional[", "").replace("Union[", "").replace("]", "|").replace(",", "|")
    tokens = [t.strip() for t in text.split("|") if t.strip() and t.strip() not in ("None", "NoneType")]
    kinds = [_JSON_TYPES[t] for t in tokens if t in _JSON_TYPES]
    if not kinds:
        return None
    if "number" in kinds:  # int | float
        return "number"
    return kinds[0]  # "str | list[str]" -> one string per request


def _required(pipeline, name: str, param: inspect.Parameter, names) -> bool:
    if pipeline.required_inputs is not None:
        return name in pipeline.required_inputs
    if param.default is inspect.Parameter.empty:
        return True
    # diffusers convention: ``prompt=None`` may be replaced by ``prompt_embeds``, which a JSON
    # request cannot carry, so over a service the prompt itself is required.
    return param.default is None and f"{name}_embeds" in names and not name.startswith("negative_")


def request_schema(pipeline) -> dict:
    """name -> {"type", "required" | "default", "minimum", "maximum", "enum"} for every argument of
    ``pipeline.__call__`` a client may send. Static shapes fixed at export time are listed as an
    ``enum`` holding the one exported value."""
    signature = inspect.signature(type(pipeline).__call__)
    params = [p for name, p in signature.parameters.items() if name != "self"]
    names = [p.name for p in params]
    limits = {**REQUEST_LIMITS, **pipeline.request_limits}
    shapes = pipeline.shapes
    schema = {}
    for param in params:
        name = param.name
        if name in SERVER_OWNED or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        kind = _json_type(name, param, pipeline.image_inputs, names)
        if kind is None:
            continue
        entry: dict = {"type": kind}
        if _required(pipeline, name, param, names):
            entry["required"] = True
        elif param.default is not inspect.Parameter.empty and param.default is not None:
            entry["default"] = param.default
        if name in shapes:
            entry["enum"] = [shapes[name]]
            entry["default"] = shapes[name]
        elif name == "scheduler" and "scheduler" in pipeline.manifest:
            from .schedulers import DIFFUSERS_CLASS_NAMES, canonical_scheduler_name

            entry["enum"] = list(pipeline.scheduler_names or sorted(DIFFUSERS_CLASS_NAMES))
            try:
                entry["default"] = canonical_scheduler_name(pipeline.manifest["scheduler"].get("_class_name"))
            except ValueError:
                pass
        if name in limits and kind in ("integer", "number"):
            entry["minimum"], entry["maximum"] = limits[name]
        schema[name] = entry
    return schema


def narrow(schema: dict, limits: dict | None) -> dict:
    """A copy of ``schema`` whose numeric ranges are cut to ``limits`` (name -> (minimum, maximum)):
    one range per argument, so that every message about it names the same bounds."""
    out = {name: dict(spec) for name, spec in schema.items()}
    for name, (low, high) in (limits or {}).items():
        spec = out.get(name)
        if spec is None or spec["type"] not in ("integer", "number"):
            continue
        spec["minimum"] = low if spec.get("minimum") is None else max(spec["minimum"], low)
        spec["maximum"] = high if spec.get("maximum") is None else min(spec["maximum"], high)
    return out


def _check_value(name: str, value, spec: dict):
    kind = spec["type"]
    if kind == "image":
        return
    if kind == "string":
        if not isinstance(value, str):
            raise RequestInvalid(name, f"{name} must be a string, got {type(value).__name__}")
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise RequestInvalid(name, f"{name} must be true or false, got {_short(value)}", [True, False])
    else:
        number = (int, float, np.integer, np.floating)
        if isinstance(value, bool) or not isinstance(value, number):
            raise RequestInvalid(name, f"{name} must be a number, got {_short(value)}")
        # a JSON integer has any size: compare it as an int (np.isfinite and float() fail on 10**400)
        if not isinstance(value, (int, np.integer)) and not math.isfinite(value):
            raise RequestInvalid(name, f"{name} must be a finite number, got {_short(value)}")
        if kind == "integer" and int(value) != value:
            raise RequestInvalid(name, f"{name} must be an integer, got {_short(value)}")
    if "enum" in spec and value not in spec["enum"]:
        raise RequestInvalid(name, f"{name}={_short(value)} is not available; allowed: {spec['enum']}", spec["enum"])
    low, high = spec.get("minimum"), spec.get("maximum")
    if kind == "integer":
        low = INT64_RANGE[0] if low is None else low
        high = INT64_RANGE[1] if high is None else high
    elif kind == "number" and isinstance(value, (int, np.integer)) and (low is None or high is None):
        low = -float(np.finfo(np.float64).max) if low is None else low
        high = float(np.finfo(np.float64).max) if high is None else high
    if (low is not None and value < low) or (high is not None and value > high):
        raise RequestInvalid(name, f"{name}={_short(value)} is out of range; allowed: {low} to {high}",
                             {"minimum": low, "maximum": high})


def _short(value) -> str:
    """repr of a client's value, cut to a readable length (a JSON integer may have 4000 digits)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def validate_request(pipeline, request: dict, limits: dict | None = None) -> dict:
    """Check ``request`` (argument name -> value; images already decoded) against the schema and
    the pipeline's cheap checks, before any graph runs. Returns the keyword arguments for
    ``pipeline(**kwargs)``; raises RequestInvalid naming the field and the allowed values.
    ``limits`` (name -> (minimum, maximum)) narrows the schema's ranges, e.g. a server's step limit."""
    schema = narrow(pipeline.request_schema(), limits)
    unknown = sorted(set(request) - set(schema))
    if unknown:
        raise RequestInvalid(unknown[0], f"unknown field {unknown[0]!r}; a {pipeline.family} export takes "
                                         f"{sorted(schema)}", sorted(schema))
    kwargs = {}
    for name, spec in schema.items():
        value = request.get(name)
        if value is None:
            if spec.get("required"):
                raise RequestInvalid(name, f"{name} is required for a {pipeline.family} export")
            continue
        _check_value(name, value, spec)
        kwargs[name] = value
    # the pipeline's own checks that need no graph: the static shapes, then scheduler and step count
    try:
        pipeline.check_shapes(**{k: v for k, v in kwargs.items() if k in pipeline.shapes})
    except ShapeMismatch as err:
        field = next(k for k in kwargs if k in pipeline.shapes and kwargs[k] != pipeline.shapes[k])
        raise RequestInvalid(field, str(err), [pipeline.shapes[field]]) from err
    if "scheduler" in pipeline.manifest and "num_inference_steps" in schema:
        from .schedulers import make_scheduler

        steps = kwargs.get("num_inference_steps", schema["num_inference_steps"].get("default"))
        try:
            scheduler = make_scheduler(pipeline.manifest["scheduler"], name=kwargs.get("scheduler"))
        except ValueError as err:
            raise RequestInvalid("scheduler", str(err), schema.get("scheduler", {}).get("enum")) from err
        # a flow scheduler with dynamic shifting takes mu from the latent size at call time; any mu
        # tells whether the step count is valid
        shift = {"mu": 0.0} if getattr(getattr(scheduler, "config", None), "use_dynamic_shifting", False) else {}
        try:
            scheduler.set_timesteps(steps, **shift)
        except ValueError as err:
            raise RequestInvalid("num_inference_steps", str(err)) from err
    pipeline.check_request(kwargs)
    return kwargs


def example_request(pipeline) -> dict:
    """The smallest valid request: every required argument filled in (a grey image of the
    exported size, a short prompt) and one denoising step. Used for warm-up calls and examples."""
    shapes = pipeline.shapes
    out = {}
    for name, spec in pipeline.request_schema().items():
        if not spec.get("required"):
            continue
        if spec["type"] == "image":
            out[name] = np.full((shapes.get("height", 64), shapes.get("width", 64), 3), 127, np.uint8)
        elif spec["type"] == "string":
            out[name] = "a red ball rolling on grass"
        elif "enum" in spec:
            out[name] = spec["enum"][0]
        elif spec["type"] in ("integer", "number"):
            out[name] = spec.get("minimum", 1)
        else:
            out[name] = False
    if "num_inference_steps" in pipeline.request_schema():
        out["num_inference_steps"] = 1
    return out
