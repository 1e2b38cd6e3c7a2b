"""serve-model: an HTTP service over exported models (FastAPI + uvicorn).

    serve-model EXPORT_DIR [NAME=EXPORT_DIR ...] --host 127.0.0.1 --port 8000 --data-dir DIR

* Graphs load once, in the device worker thread, which then runs one warm-up call per model;
  ``/readyz`` answers 200 only after that.
* ``POST /v1/videos`` checks the request against the export (``ExportedPipeline.validate_request``,
  built from the signature of the family's ``__call__`` and the manifest's static shapes), writes
  the job to disk and answers 202. Nothing here knows a family: any family that ``load_pipeline``
  supports is served.
* One worker per device runs the jobs in order; the queue is bounded (429 + Retry-After).
* Jobs and results live under ``--data-dir`` (see jobs.py); after a crash, queued and interrupted
  jobs run again and finished results are still served.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import inspect
import io
import json
import logging
import math
import os
import re
import secrets
import signal
import sys
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse

from .backends import BACKENDS

log = logging.getLogger("video_aot.serve")

API_VERSION = "v1"
OUTPUT_FORMATS = {"mp4": "video/mp4", "gif": "image/gif"}
DEFAULT_FPS = 8  # frame rate of the written file when the family takes no ``fps`` argument
SERVER_FIELDS = ("model", "output_format")


@dataclass
class Settings:
    exports: list  # [(name, path)]
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: str = "serve-data"
    max_queue: int = 16
    keep_hours: float = 24.0
    api_key_file: str | None = None
    max_body_bytes: int = 16 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_steps: int = 100
    backend: str | None = None
    check_sums: bool = True
    warmup: bool = True
    api_keys: list = field(default_factory=list)
    allowed_hosts: list = field(default_factory=list)  # Host header names accepted besides loopback and --host


class ApiError(Exception):
    """An error answer: HTTP status, message, and for request errors the field and allowed values."""

    def __init__(self, status: int, message: str, field: str | None = None, allowed=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.field, self.allowed = status, message, field, allowed
        self.headers = headers or {}

    def body(self) -> dict:
        error = {"message": self.message}
        if self.field is not None:
            error["field"] = self.field
        if self.allowed is not None:
            error["allowed"] = self.allowed
        return {"error": error}


def parse_export_args(values) -> list:
    """EXPORT_DIR or NAME=EXPORT_DIR -> [(name, path)]; the name defaults to the folder's name."""
    out, seen = [], {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = Path(value).resolve().name, value
        if name in seen:
            raise ValueError(f"two exports are named {name!r} ({seen[name]} and {path}); "
                             f"name them with NAME=EXPORT_DIR")
        seen[name] = path
        out.append((name, path))
    return out


# ---------------------------------------------------------------------------------------------- service
class Model:
    def __init__(self, name: str, path: str):
        from .manifest import read_manifest

        self.name = name
        self.path = Path(path).resolve()
        self.manifest = read_manifest(self.path)  # fails early on a folder that is no export
        self.pipeline = None
        self.schema: dict | None = None
        self.limits: dict = {}  # the server's narrower ranges (--max-steps)
        self.call_args: set = set()

    def describe(self) -> dict:
        out = {"name": self.name, "family": self.manifest["family"], "pipeline": self.manifest.get("pipeline"),
               "dtype": self.manifest.get("dtype"), "dtype_plan": self.manifest.get("dtype_plan"),
               "shapes": self.manifest["shapes"],
               "ready": self.schema is not None}
        if self.schema is not None:
            out["parameters"] = self.schema
        return out


class Service:
    """Models, the job store, the device worker and the metrics: everything behind the HTTP layer."""

    def __init__(self, settings: Settings):
        from .jobs import JobStore
        from .metrics import Metrics

        from .request import REQUEST_LIMITS

        low, high = REQUEST_LIMITS["num_inference_steps"]
        if not low <= settings.max_steps <= high:
            raise ValueError(f"--max-steps must be {low} to {high}, got {settings.max_steps}")
        self.settings = settings
        self.models = {name: Model(name, path) for name, path in settings.exports}
        for model in self.models.values():
            batch = model.manifest["shapes"].get("batch", 1)
            if batch != 1:
                raise ValueError(f"{model.path}: serve-model serves one video per job; this export was built "
                                 f"for batch={batch}. Re-export it with batch 1.")
        self.store = JobStore(settings.data_dir, settings.max_queue)
        self.metrics = Metrics()
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.load_error: str | None = None
        self.loading: str | None = None
        self.run_seconds: list = []  # recent job run times, for Retry-After
        self._threads: list = []
        self.exit_on_load_error = False  # main() sets it: a server that cannot load its models stops
        for name, kind, text in (
            ("video_aot_http_responses_total", "counter", "HTTP responses by status code."),
            ("video_aot_jobs_finished_total", "counter", "Jobs that reached a final state, by model and state."),
            ("video_aot_stage_seconds", "histogram", "Latency of each pipeline stage (graph call or loop phase)."),
            ("video_aot_job_queue_seconds", "histogram", "Time a job waited in the queue."),
            ("video_aot_job_run_seconds", "histogram", "Time a job ran on the worker, video encoding included."),
            ("video_aot_warmup_seconds", "histogram", "Load and warm-up time per model at start-up."),
        ):
            self.metrics.describe(name, kind, text)

    # ------------------------------------------------------------------ lifecycle
    def start(self):
        for target, name in ((self._worker, "device-worker"), (self._janitor, "janitor")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0):
        self.stopping.set()
        with self.store.lock:
            self.store.lock.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def _janitor(self):
        keep = self.settings.keep_hours * 3600.0
        period = max(1.0, min(60.0, keep / 4))
        while not self.stopping.is_set():
            try:
                removed = self.store.expire(keep)
                if removed:
                    log.info("deleted the results of %d jobs older than %.3g h", removed, self.settings.keep_hours)
            except OSError as err:
                log.warning("cleaning old results failed: %s", err)
            self.stopping.wait(period)

    # ------------------------------------------------------------------ the device worker
    def _load(self):
        from . import load_pipeline
        from .request import narrow

        for model in self.models.values():
            start = time.perf_counter()
            self.loading = model.name
            pipe = load_pipeline(model.path, backend=self.settings.backend, check_sums=self.settings.check_sums)
            pipe.set_progress_bar_config(disable=True)
            schema = pipe.request_schema()
            model.call_args = set(inspect.signature(type(pipe).__call__).parameters)
            if self.settings.warmup:
                kwargs = pipe.validate_request(pipe.example_request())
                if "output_type" in model.call_args:
                    kwargs["output_type"] = "uint8"
                log.info("%s: warm-up call (%s)", model.name, ", ".join(sorted(kwargs)))
                pipe(**kwargs)
                pipe.timings.clear()
            # this server's own step limit narrows the family's: one range, shown by /v1/models and
            # named by every refusal
            model.limits = {"num_inference_steps": (1, self.settings.max_steps)}
            model.pipeline, model.schema = pipe, narrow(schema, model.limits)
            seconds = time.perf_counter() - start
            self.metrics.observe("video_aot_warmup_seconds", seconds, {"model": model.name})
            log.info("%s (%s) loaded and warmed up in %.1f s", model.name, pipe.family, seconds)
        self.loading = None

    def _worker(self):
        try:
            self._load()
        except Exception as err:  # a model that does not load: readyz says why, main() exits non-zero
            log.exception("loading the models failed")
            self.load_error = f"{self.loading}: {type(err).__name__}: {err}"
            if self.exit_on_load_error:
                os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down; main() returns 1
            return
        self.ready.set()
        while not self.stopping.is_set():
            job = self.store.next(timeout=0.5)
            if job is None:
                continue
            try:
                self._run(job)
            except Exception as err:  # never lose the worker: the job fails, the next one runs
                log.exception("job %s: the worker failed around the pipeline call", job["id"])
                self.store.finish(job["id"], "failed", error=f"{type(err).__name__}: {err}")

    def _run(self, job: dict):
        from PIL import Image

        from .base import Cancelled
        from .video_io import write_video

        model = self.models.get(job["model"])
        if model is None:  # accepted by an earlier start that served this model
            self.store.finish(job["id"], "failed", error=f"model {job['model']!r} is not served any more; "
                                                         f"this server has {sorted(self.models)}")
            return
        pipe = model.pipeline
        folder = self.store.folder(job["id"])
        self.metrics.observe("video_aot_job_queue_seconds", job["started_at"] - job["created_at"], {"model": model.name})
        kwargs = dict(job["params"])
        total = job["total_steps"]

        def on_step(_pipe, i, t, tensors):
            self.store.set_progress(job["id"], i + 1, total)
            if self.stopping.is_set() or self.store.is_cancelled(job["id"]):
                raise Cancelled(f"job {job['id']} cancelled at step {i + 1} of {total}")
            return tensors

        if "output_type" in model.call_args:
            kwargs["output_type"] = "uint8"
        if "callback_on_step_end" in model.call_args:
            kwargs["callback_on_step_end"] = on_step
        elif "callback" in model.call_args:  # the older diffusers form: callback(step, timestep, latents)
            kwargs["callback"] = lambda i, t, latents: on_step(pipe, i, t, None)
            if "callback_steps" in model.call_args:
                kwargs["callback_steps"] = 1
        start = time.perf_counter()
        state, error, result = "failed", None, None
        try:
            for name in job["inputs"]:  # the decoded images, as the PIL images a diffusers user passes
                with Image.open(folder / f"{name}.png") as im:
                    kwargs[name] = im.convert("RGB")
            frames = pipe(**kwargs).frames[0]  # uint8 [F, H, W, 3]
            name = f"result.{job['output_format']}"
            write_video(folder / name, frames, fps=job["params"].get("fps", DEFAULT_FPS))  # atomic rename
            with open(folder / name, "rb") as fh:
                os.fsync(fh.fileno())
            state, result = "succeeded", name
        except Cancelled as err:
            if self.stopping.is_set() and not self.store.is_cancelled(job["id"]):
                self.store.requeue(job["id"])  # shutting down: the next start runs it again
                return
            state, error = "cancelled", str(err)
        except Exception as err:  # the job fails; the service goes on
            log.exception("job %s failed", job["id"])
            error = f"{type(err).__name__}: {err}"
        finally:
            seconds = time.perf_counter() - start
            for stage, values in list(pipe.timings.items()):
                for value in values:
                    self.metrics.observe("video_aot_stage_seconds", value, {"model": model.name, "stage": stage})
            pipe.timings.clear()  # the lists would otherwise grow with every job served
        self.run_seconds = (self.run_seconds + [seconds])[-20:]
        self.metrics.observe("video_aot_job_run_seconds", seconds, {"model": model.name})
        self.metrics.inc("video_aot_jobs_finished_total", {"model": model.name, "state": state})
        self.store.finish(job["id"], state, error=error, result=result)

    # ------------------------------------------------------------------ requests
    def retry_after(self) -> int:
        """Seconds until a queue slot is likely to free: the recent mean job time."""
        recent = self.run_seconds or [5.0]
        return max(1, math.ceil(sum(recent) / len(recent)))

    def decode_image(self, name: str, value) -> tuple:
        """base64 (optionally a data: URL) -> (PIL RGB image, PNG bytes), with the pixel count capped
        before any pixel is decoded."""
        from PIL import Image, UnidentifiedImageError

        if not isinstance(value, str):
            raise ApiError(422, f"{name} must be a base64-encoded image (PNG, JPEG, WebP) string", name)
        if value.startswith("data:"):
            value = value.partition(",")[2]
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as err:
            raise ApiError(400, f"{name} is not valid base64: {err}", name) from err
        cap = self.settings.max_image_pixels
        try:
            with Image.open(io.BytesIO(raw)) as im:  # reads the header only
                width, height = im.size
                if width * height > cap:
                    raise ApiError(413, f"{name} is {width}x{height} = {width * height} pixels; the limit is {cap}",
                                   name, {"max_pixels": cap})
                im.seek(0)
                rgb = im.convert("RGB")  # first frame of an animated image
        except ApiError:
            raise
        except Image.DecompressionBombError as err:  # PIL's own guard, past 2 * Image.MAX_IMAGE_PIXELS
            raise ApiError(413, f"{name}: {err}", name, {"max_pixels": cap}) from err
        except UnidentifiedImageError as err:
            raise ApiError(400, f"{name}: the decoded base64 ({len(raw)} bytes) is no image format Pillow reads "
                                "(PNG, JPEG, WebP, ...)", name) from err
        except (OSError, ValueError) as err:  # a truncated or corrupt image; PIL names the stream by its repr
            reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the image", str(err))
            raise ApiError(400, f"{name} is not a decodable image: {reason}", name) from err
        png = io.BytesIO()
        rgb.save(png, format="PNG")
        return rgb, png.getvalue()

    def submit(self, body: dict) -> dict:
        if not isinstance(body, dict):
            raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
        name = body.get("model")
        if name is None:
            raise ApiError(422, "model is required", "model", sorted(self.models))
        if not isinstance(name, str) or name not in self.models:
            raise ApiError(422, f"unknown model {name!r}", "model", sorted(self.models))
        model = self.models[name]
        if model.schema is None:
            raise ApiError(503, f"model {name!r} is still loading", headers={"Retry-After": "5"})
        output_format = body.get("output_format", "mp4")
        if not isinstance(output_format, str) or output_format not in OUTPUT_FORMATS:
            raise ApiError(422, f"output_format {output_format!r} is not supported", "output_format",
                           sorted(OUTPUT_FORMATS))
        request = {k: v for k, v in body.items() if k not in SERVER_FIELDS}
        files = {}
        for key, spec in model.schema.items():
            if spec["type"] == "image" and request.get(key) is not None:
                request[key], files[key] = self.decode_image(key, request[key])
        from .request import RequestInvalid, validate_request

        try:
            kwargs = validate_request(model.pipeline, request, model.limits)
        except RequestInvalid as err:
            raise ApiError(422, str(err), err.field, err.allowed) from err
        except ValueError as err:  # ShapeMismatch or a family's own check
            raise ApiError(422, str(err), next((k for k in request if str(err).startswith(k)), None)) from err
        params = {k: v for k, v in kwargs.items() if k not in files}
        if "seed" in model.schema and params.get("seed") is None:
            # drawn once at accept time and kept with the job: a job run again after a crash
            # gives the same video, and the client can reproduce it
            params["seed"] = secrets.randbelow(2**31)
        total = params.get("num_inference_steps", model.schema.get("num_inference_steps", {}).get("default", 0))
        job = self.store.submit(name, params, files, output_format, total)
        if job is None:
            raise ApiError(429, f"the queue is full ({self.settings.max_queue} jobs waiting); retry later",
                           headers={"Retry-After": str(self.retry_after())})
        return job

    # ------------------------------------------------------------------ answers
    @staticmethod
    def status(job: dict) -> dict:
        def iso(t):
            return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"

        out = {"id": job["id"], "object": "video", "model": job["model"], "status": job["state"],
               "output_format": job["output_format"], "created_at": iso(job["created_at"]),
               "started_at": iso(job["started_at"]), "finished_at": iso(job["finished_at"]),
               "attempts": job["attempts"], "error": job["error"], "parameters": job["params"]}
        if job["state"] == "queued":
            out["queue_position"] = job.get("queue_position")
        if job["state"] == "running":
            out["progress"] = {"step": job.get("step", 0), "total": job["total_steps"]}
        if job["state"] == "succeeded" and not job.get("expired"):
            out["content_url"] = f"/{API_VERSION}/videos/{job['id']}/content"
        if job.get("expired"):
            out["expired"] = True
        return out

    def gauges(self) -> list:
        counts = self.store.counts()
        out = [("video_aot_queue_depth", "Jobs waiting in the queue.", {}, self.store.depth()),
               ("video_aot_queue_capacity", "Queue bound (--max-queue).", {}, self.settings.max_queue),
               ("video_aot_ready", "1 once every model has loaded and warmed up.", {}, int(self.ready.is_set()))]
        out += [("video_aot_jobs", "Jobs known to the service, by state.", {"state": s}, n) for s, n in counts.items()]
        return out


# ---------------------------------------------------------------------------------------------- HTTP
def read_api_keys(path) -> list:
    keys = [line.strip() for line in Path(path).read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not keys:
        raise ValueError(f"--api-key-file {path} holds no key (one token per line)")
    return keys


class AuthMiddleware:
    """Bearer-token check on every path but /healthz (pure ASGI, so it also covers /docs)."""

    OPEN = ("/healthz",)

    def __init__(self, app, keys: list):
        self.app = app
        self.keys = [k.encode() for k in keys]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.OPEN:
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and any(hmac.compare_digest(token.strip(), k) for k in self.keys):
            return await self.app(scope, receive, send)
        response = JSONResponse({"error": {"message": "missing or wrong bearer token (Authorization: Bearer <key>)"}},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def host_name(header: str) -> str:
    """The name in a Host header, without its port: "example.com:8000" -> "example.com",
    "[::1]:8000" -> "::1"."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def is_ip_literal(name: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostCheckMiddleware:
    """Answers 421 to a request whose Host header is not a name this server was started for: the
    loopback names, the bound --host and every --allowed-host. A page on another site that rebinds
    its own DNS name to 127.0.0.1 (DNS rebinding) sends its own name, and is refused. Bound to a
    wildcard address (0.0.0.0, ::), any IP address is also accepted, as an address cannot rebind."""

    def __init__(self, app, names, any_ip: bool):
        self.app = app
        self.names = {host_name(n) if n.startswith("[") else n.lower() for n in names}
        self.any_ip = any_ip

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"host")
        if header is None:  # HTTP/1.0 without Host: no browser sends that
            return await self.app(scope, receive, send)
        raw = header.decode("latin-1")
        name = host_name(raw)
        if name in self.names or (self.any_ip and is_ip_literal(name)):
            return await self.app(scope, receive, send)
        shown = raw if len(raw) <= 80 else raw[:80] + "..."
        response = JSONResponse({"error": {
            "message": f"Host header {shown!r} is not a name this server answers to (a guard against DNS "
                       f"rebinding); allowed: {sorted(self.names)}. Start serve-model with --allowed-host NAME "
                       f"to add a name.", "allowed": sorted(self.names)}}, status_code=421)
        await response(scope, receive, send)


def docs_page(app) -> str:
    """/docs without a CDN: the operations of the OpenAPI description as a plain page. (FastAPI's
    Swagger UI page loads its scripts from a CDN, so it is blank offline, and no installed package
    ships the Swagger UI assets.)"""
    import html

    rows = []
    for path, methods in app.openapi()["paths"].items():
        for method, op in methods.items():
            rows.append(f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                        f"<td>{html.escape(op.get('summary', ''))}</td></tr>")
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>video-aot serve-model API</title></head><body>"
            "<h1>video-aot serve-model API</h1>"
            "<p>The full description is <a href=\"/openapi.json\">/openapi.json</a> (OpenAPI 3). Load it into any "
            "OpenAPI viewer or client generator; this server ships no Swagger UI, so that this page works offline "
            "and loads nothing from other sites. <code>GET /v1/models</code> lists each model's parameters with "
            "their types, defaults, ranges and exported shapes.</p>"
            "<table border=\"1\" cellpadding=\"4\"><tr><th>method</th><th>path</th><th>what</th></tr>"
            + "".join(rows) + "</table></body></html>")


def create_app(service: Service):
    @asynccontextmanager
    async def lifespan(app):
        service.start()
        yield
        service.stop()

    app = FastAPI(title="video-aot serve-model", version=API_VERSION, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Exported video diffusion models behind a bounded job queue. "
                              "Submit with POST /v1/videos, poll GET /v1/videos/{id}, "
                              "download GET /v1/videos/{id}/content.")
    if service.settings.api_keys:
        app.add_middleware(AuthMiddleware, keys=service.settings.api_keys)
    settings = service.settings
    app.add_middleware(HostCheckMiddleware, names=(*LOOPBACK_NAMES, settings.host, *settings.allowed_hosts),
                       any_ip=settings.host in WILDCARD_HOSTS)

    @app.middleware("http")
    async def count_responses(request: Request, call_next):
        try:
            response = await call_next(request)
        except Exception as err:  # a bug: answer and count a 500 instead of dropping the connection
            log.exception("%s %s failed", request.method, request.url.path)
            response = JSONResponse({"error": {"message": f"internal server error ({type(err).__name__}); "
                                                          "the server log has the details"}}, status_code=500)
        service.metrics.inc("video_aot_http_responses_total", {"code": response.status_code})
        return response

    @app.exception_handler(ApiError)
    async def api_error(request, err: ApiError):
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    def job_or_404(job_id: str) -> dict:
        job = service.store.get(job_id) if len(job_id) == 32 else None
        if job is None:
            shown = repr(job_id) if len(job_id) <= 40 else f"{job_id[:32]!r}... ({len(job_id)} characters)"
            raise ApiError(404, f"no job {shown}; job ids are 32 hexadecimal characters")
        return job

    @app.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    def docs():
        return HTMLResponse(docs_page(app))

    @app.get("/healthz", tags=["operations"], summary="Liveness: the process answers.")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Readiness: every model loaded and warmed up.")
    def readyz():
        body = {"ready": service.ready.is_set(), "models": {m.name: m.schema is not None for m in service.models.values()}}
        if service.load_error:
            body["error"] = service.load_error
        return JSONResponse(body, status_code=200 if service.ready.is_set() else 503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics (text format 0.0.4).",
             response_class=PlainTextResponse)
    def metrics():
        return PlainTextResponse(service.metrics.render(service.gauges()),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get(f"/{API_VERSION}/models", tags=["videos"], summary="The served models: family, exported shapes, parameters.")
    def models():
        return {"object": "list", "data": [m.describe() for m in service.models.values()]}

    @app.post(f"/{API_VERSION}/videos", status_code=202, tags=["videos"], summary="Submit a video generation job.",
              openapi_extra=request_body_doc(service),
              responses={202: {"description": "accepted; poll GET /v1/videos/{id}"},
                         400: {"description": "malformed JSON or base64"}, 401: {"description": "bad token"},
                         413: {"description": "body or image too large"},
                         415: {"description": "the body is not Content-Type: application/json"},
                         421: {"description": "the Host header is not a name of this server"},
                         422: {"description": "the request does not fit the model; names field and allowed values"},
                         429: {"description": "queue full; see Retry-After"}, 503: {"description": "still loading"}})
    async def create_video(request: Request):
        # JSON only: a form or text/plain POST from any web page needs no CORS preflight
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != "application/json":
            raise ApiError(415, f"the request body must be JSON with Content-Type: application/json, got "
                                f"{media_type[:80] or 'no Content-Type'!r}", allowed=["application/json"])
        declared = request.headers.get("content-length")
        cap = service.settings.max_body_bytes
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise ApiError(413, f"request body of {declared} bytes is over the limit of {cap}", allowed={"max_bytes": cap})
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise ApiError(413, f"request body is over the limit of {cap} bytes", allowed={"max_bytes": cap})
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError) as err:
            raise ApiError(400, f"the request body is not valid JSON: {err}") from err
        job = await run_in_threadpool(service.submit, body)  # image decoding and fsynced writes: off the loop
        status = Service.status(service.store.get(job["id"]))
        return JSONResponse(status, status_code=202, headers={"Location": f"/{API_VERSION}/videos/{job['id']}"})

    @app.get(f"/{API_VERSION}/videos/{{job_id}}", tags=["videos"], summary="A job's status and progress.")
    def get_video(job_id: str):
        return Service.status(job_or_404(job_id))

    @app.get(f"/{API_VERSION}/videos/{{job_id}}/content", tags=["videos"], summary="The generated video file.",
             responses={200: {"content": {t: {} for t in OUTPUT_FORMATS.values()}}})
    def get_content(job_id: str):
        job = job_or_404(job_id)
        if job.get("expired"):
            raise ApiError(410, f"the result of job {job_id} was deleted after {service.settings.keep_hours:g} hours")
        if job["state"] != "succeeded":
            raise ApiError(409, f"job {job_id} is {job['state']}; content is available once it has succeeded",
                           allowed=["succeeded"])
        path = service.store.folder(job_id) / job["result"]
        return FileResponse(path, media_type=OUTPUT_FORMATS[job["output_format"]],
                            filename=f"{job_id}.{job['output_format']}")

    @app.delete(f"/{API_VERSION}/videos/{{job_id}}", tags=["videos"],
                summary="Cancel a job; a running job stops at its next step boundary.")
    def cancel_video(job_id: str):
        job_or_404(job_id)
        before = service.store.cancel(job_id)
        job = service.store.get(job_id)
        body = Service.status(job)
        if before == "running":
            body["cancel_requested"] = True
            return JSONResponse(body, status_code=202)
        if before in ("succeeded", "failed", None):  # None: finished and expired
            raise ApiError(409, f"job {job_id} has already {job['state']}", allowed=["queued", "running"])
        return body

    return app


def request_body_doc(service: Service) -> dict:
    """The POST body in the OpenAPI page: the common fields plus every model's parameters."""
    properties = {
        "model": {"type": "string", "enum": sorted(service.models), "description": "the export's name (GET /v1/models)"},
        "output_format": {"type": "string", "enum": sorted(OUTPUT_FORMATS), "default": "mp4"},
        "image": {"type": "string", "format": "byte", "description": "base64 image, for image-to-video models"},
        "prompt": {"type": "string", "description": "for text-to-video models"},
        "negative_prompt": {"type": "string"},
        "num_inference_steps": {"type": "integer", "minimum": 1, "maximum": service.settings.max_steps},
        "seed": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
    }
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["model"], "properties": properties, "additionalProperties": True,
        "description": "Any other argument of the model's pipeline (guidance, fps, motion_bucket_id, "
                       "noise_aug_strength, ...): GET /v1/models lists each model's parameters with their "
                       "types, defaults, ranges and the exported shapes."}}}}}


# ---------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serve-model", description="Serve exported models over HTTP.")
    parser.add_argument("exports", nargs="+", metavar="EXPORT_DIR", help="export folders; NAME=DIR to name one")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--data-dir", default="serve-data", help="jobs and results, kept across restarts")
    parser.add_argument("--max-queue", type=int, default=16, help="jobs waiting at most; more answer 429")
    parser.add_argument("--keep-hours", type=float, default=24.0, help="delete results older than this")
    parser.add_argument("--api-key-file", help="file of bearer tokens, one a line; every endpoint but /healthz needs one")
    parser.add_argument("--max-body-mb", type=float, default=16.0, help="request body limit")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="a Host header name to accept besides 127.0.0.1, localhost, [::1] and --host "
                             "(repeatable; other names answer 421, against DNS rebinding)")
    parser.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="decoded image limit (width*height)")
    parser.add_argument("--max-steps", type=int, default=100, help="num_inference_steps limit, 1 to 500")
    parser.add_argument("--backend", default=None, choices=BACKENDS)
    parser.add_argument("--no-check-sums", action="store_true", help="skip the sha256 check of the graphs at start")
    parser.add_argument("--log-level", default="info")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.max_queue < 1:
        print("serve-model: error: --max-queue must be at least 1", file=sys.stderr)
        return 2
    try:
        settings = Settings(
            exports=parse_export_args(args.exports), host=args.host, port=args.port, data_dir=args.data_dir,
            max_queue=args.max_queue, keep_hours=args.keep_hours, api_key_file=args.api_key_file,
            max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_image_pixels=args.max_image_pixels,
            max_steps=args.max_steps, backend=args.backend, check_sums=not args.no_check_sums,
            api_keys=read_api_keys(args.api_key_file) if args.api_key_file else [],
            allowed_hosts=args.allowed_host,
        )
    except (ValueError, RuntimeError, OSError) as err:
        print(f"serve-model: error: {err}", file=sys.stderr)
        return 2
    # listen first: a port in use fails here, in a second, not after the models have loaded
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as err:
        print(f"serve-model: error: cannot listen on {args.host}:{args.port}: {err.strerror or err}. "
              f"Is another server running there? Pick another --port.", file=sys.stderr)
        return 2
    try:
        service = Service(settings)
    except (ValueError, RuntimeError, OSError) as err:
        sock.close()
        print(f"serve-model: error: {err}", file=sys.stderr)
        return 2
    from . import image

    image.MAX_IMAGE_PIXELS = settings.max_image_pixels  # the pipelines' own cap (runtime/image.py) follows the server's
    if args.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_keys:
        log.warning("listening on %s without --api-key-file: anyone who can reach the port can submit jobs", args.host)
    recovered = service.store.recovered
    log.info("data dir %s: %d queued again (%d were running), %d finished results, %d temporary files of "
             "interrupted writes removed, %d unreadable records quarantined", settings.data_dir, recovered["requeued"],
             recovered["resumed"], recovered["finished"], recovered["orphans"], recovered["quarantined"])
    import uvicorn

    service.exit_on_load_error = True
    config = uvicorn.Config(create_app(service), host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=10)
    uvicorn.Server(config).run(sockets=[sock])
    return 1 if service.load_error else 0


def bind_socket(host: str, port: int):
    """A TCP socket bound to (host, port), as uvicorn binds one (IPv6 for an address with a colon)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


if __name__ == "__main__":
    sys.exit(main())
