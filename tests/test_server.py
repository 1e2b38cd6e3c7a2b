"""serve-model over HTTP: the real server in a subprocess on a loopback port, with tiny exports.

One tiny SVD export per session (4 frames, 64x64) is shared by every test. Server processes:
the main one (no auth, queue of 2), one with an API key, and two for the restart test. Every
process is killed in a ``finally``."""
from __future__ import annotations

import base64
import io
import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

# the serve extra is part of the test extra: a missing package fails here, it does not skip the file
import httpx
import fastapi  # noqa: F401
import uvicorn  # noqa: F401

FRAMES, HEIGHT, WIDTH = 4, 64, 64
MAX_QUEUE = 2
MAX_IMAGE_PIXELS = 1_000_000
MAX_BODY_MB = 1.0
FINAL = ("succeeded", "failed", "cancelled")


# ----------------------------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def png_b64(height=HEIGHT, width=WIDTH, seed=0, mode="RGB") -> str:
    from PIL import Image

    rng = np.random.default_rng(seed)
    if mode == "L":
        image = Image.new("L", (width, height))
    else:
        image = Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode_video(data: bytes, suffix: str, folder: Path):
    """(frame count, (width, height)) as imageio-ffmpeg decodes the file."""
    import imageio_ffmpeg

    path = folder / f"video-{time.monotonic_ns()}.{suffix}"
    path.write_bytes(data)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    count = sum(1 for _ in reader)
    return count, tuple(meta["size"])


class Server:
    """serve-model in a subprocess, on a free loopback port."""

    def __init__(self, exports, data_dir, workdir: Path, *extra, token=None):
        self.exports, self.data_dir, self.extra, self.token = list(exports), str(data_dir), list(extra), token
        self.workdir = workdir
        self.proc = None
        self.log = None

    def start(self, timeout=240):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.workdir / f"server-{self.port}.log"
        cmd = [sys.executable, "-m", "video_aot.runtime.server", *self.exports, "--port", str(self.port),
               "--data-dir", self.data_dir, "--log-level", "warning", *self.extra]
        with open(self.log, "w") as fh:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=self.workdir)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve-model exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", headers=headers, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"serve-model not ready after {timeout} s:\n{self.log_tail()}")

    def client(self, token=None) -> "httpx.Client":
        token = self.token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def log_tail(self, n=40) -> str:
        return "\n".join(self.log.read_text().splitlines()[-n:]) if self.log and self.log.exists() else ""

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_for(client, job_id, states=FINAL, timeout=120, predicate=None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/v1/videos/{job_id}").json()
        if status["status"] in states and (predicate is None or predicate(status)):
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach {states} in {timeout} s; last: {status}")


def submit(client, **body):
    response = client.post("/v1/videos", json={"model": "svd", "image": png_b64(), "seed": 0, **body})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        sample, _, raw = series.partition("{")
        found = dict(re.findall(r'(\w+)="([^"]*)"', raw))
        if sample == name and all(found.get(k) == str(v) for k, v in labels.items()):
            return float(value)
    return 0.0


# ----------------------------------------------------------------------------------------------- fixtures
# SVD and text-to-video: the family tests' own tiny snapshots (tests/tiny.py, tests/tiny_t2v.py), which
# export in under half the time of the tiny presets; the server does not depend on the weights
@pytest.fixture(scope="session")
def svd_export(tmp_path_factory):
    from tiny import svd_snapshot

    from video_aot.export.run import export_model

    root = tmp_path_factory.mktemp("serve-exports")
    svd_snapshot(root / "snapshot")
    return export_model(str(root / "snapshot"), str(root / "svd"), frames=FRAMES, height=HEIGHT, width=WIDTH,
                        log=lambda *a: None, onnx=False)


@pytest.fixture(scope="session")
def t2v_export(tmp_path_factory):
    from tiny_t2v import t2v_pipeline

    from video_aot.export.run import export_model

    root = tmp_path_factory.mktemp("serve-exports-t2v")
    t2v_pipeline(root / "snapshot")
    return export_model(str(root / "snapshot"), str(root / "t2v"), frames=FRAMES, height=HEIGHT, width=WIDTH,
                        log=lambda *a: None, onnx=False)


COGVIDEOX_FRAMES = 9  # 3 latent frames


@pytest.fixture(scope="session")
def cogvideox_export(tmp_path_factory):
    from video_aot.export.run import export_model

    out = tmp_path_factory.mktemp("serve-exports-cogvideox") / "cogvideox"
    return export_model("tiny-cogvideox-2b", str(out), frames=COGVIDEOX_FRAMES, height=HEIGHT, width=WIDTH,
                        log=lambda *a: None, onnx=False)


@pytest.fixture(scope="session")
def server(svd_export, t2v_export, cogvideox_export, tmp_path_factory):
    work = tmp_path_factory.mktemp("serve-main")
    exports = [f"svd={svd_export}", f"cogvideox={cogvideox_export}", f"t2v={t2v_export}"]
    srv = Server(exports, work / "data", work, "--max-queue", str(MAX_QUEUE), "--max-steps", "400",
                 "--max-image-pixels", str(MAX_IMAGE_PIXELS), "--max-body-mb", str(MAX_BODY_MB))
    try:
        yield srv.start()
    finally:
        srv.stop()


@pytest.fixture
def client(server):
    with server.client() as c:
        yield c


# ----------------------------------------------------------------------------------------------- tests
def test_models_health_and_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["ready"] is True
    models = {m["name"]: m for m in client.get("/v1/models").json()["data"]}
    svd = models["svd"]
    assert svd["family"] == "svd" and svd["ready"]
    assert svd["dtype"] == "fp32" and svd["dtype_plan"] == {"image_encoder": "fp32", "unet": "fp32", "vae": "fp32"}
    assert svd["shapes"]["num_frames"] == FRAMES and svd["shapes"]["height"] == HEIGHT
    params = svd["parameters"]
    assert params["image"] == {"type": "image", "required": True}
    assert params["num_frames"]["enum"] == [FRAMES]
    assert params["num_inference_steps"]["maximum"] == 400  # the server's --max-steps
    spec = client.get("/openapi.json").json()
    assert {"/v1/videos", "/v1/videos/{job_id}", "/v1/videos/{job_id}/content", "/v1/models",
            "/metrics", "/healthz", "/readyz"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize("output_format", ["mp4", "gif"])
def test_image_to_video_happy_path(client, output_format, tmp_path):
    job_id = submit(client, num_inference_steps=2, output_format=output_format, fps=6, motion_bucket_id=100,
                    noise_aug_strength=0.05, min_guidance_scale=1.0, max_guidance_scale=2.5)
    status = wait_for(client, job_id)
    assert status["status"] == "succeeded", status
    assert status["content_url"] == f"/v1/videos/{job_id}/content"
    response = client.get(status["content_url"])
    assert response.status_code == 200
    assert response.headers["content-type"] == {"mp4": "video/mp4", "gif": "image/gif"}[output_format]
    assert decode_video(response.content, output_format, tmp_path) == (FRAMES, (WIDTH, HEIGHT))


def test_text_to_video_happy_path(server, tmp_path):
    with server.client() as client:  # the server serves the tiny t2v export next to the svd one
        models = {m["name"]: m for m in client.get("/v1/models").json()["data"]}
        assert models["t2v"]["parameters"]["prompt"]["required"]  # a text-to-video model
        missing = client.post("/v1/videos", json={"model": "t2v", "num_inference_steps": 2})
        assert missing.status_code == 422 and missing.json()["error"]["field"] == "prompt"
        response = client.post("/v1/videos", json={"model": "t2v", "prompt": "a red ball", "negative_prompt": "blur",
                                                   "num_inference_steps": 2, "guidance_scale": 7.5, "seed": 3})
        assert response.status_code == 202, response.text
        status = wait_for(client, response.json()["id"])
        assert status["status"] == "succeeded", status
        video = client.get(status["content_url"]).content
    assert decode_video(video, "mp4", tmp_path) == (FRAMES, (WIDTH, HEIGHT))


def test_cogvideox_happy_path(server, tmp_path):
    with server.client() as client:
        response = client.post("/v1/videos", json={"model": "cogvideox", "prompt": "a red ball", "num_inference_steps": 2,
                                                   "guidance_scale": 6.0, "seed": 3, "output_format": "gif"})
        assert response.status_code == 202, response.text
        status = wait_for(client, response.json()["id"])
        assert status["status"] == "succeeded", status
        video = client.get(status["content_url"]).content
    assert decode_video(video, "gif", tmp_path) == (COGVIDEOX_FRAMES, (WIDTH, HEIGHT))


def _error(response, status):
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_rejections(client):
    image = png_b64()
    # unknown model / no model
    err = _error(client.post("/v1/videos", json={"model": "nope", "image": image}), 422)
    assert err["field"] == "model" and "svd" in err["allowed"]
    assert _error(client.post("/v1/videos", json={"image": image}), 422)["field"] == "model"
    assert _error(client.post("/v1/videos", json={"model": ["svd"], "image": image}), 422)["field"] == "model"
    # sizes and frame counts that were not exported
    for field, value, allowed in (("num_frames", FRAMES + 1, FRAMES), ("height", 128, HEIGHT), ("width", 32, WIDTH)):
        err = _error(client.post("/v1/videos", json={"model": "svd", "image": image, field: value}), 422)
        assert err["field"] == field and err["allowed"] == [allowed], err
    # missing image
    assert _error(client.post("/v1/videos", json={"model": "svd"}), 422)["field"] == "image"
    # out-of-range, wrongly typed, unknown and server-owned parameters
    for literal in ("NaN", "Infinity"):  # Python's json reads them; they are no valid parameter
        raw = '{"model": "svd", "image": "%s", "noise_aug_strength": %s}' % (image, literal)
        err = _error(client.post("/v1/videos", content=raw.encode(), headers={"content-type": "application/json"}), 422)
        assert err["field"] == "noise_aug_strength"
    for field, value in (("num_inference_steps", 0), ("num_inference_steps", 401), ("motion_bucket_id", 999),
                         ("noise_aug_strength", -1.0), ("max_guidance_scale", 1e6), ("fps", 0), ("seed", -1),
                         ("num_inference_steps", 2.5), ("num_inference_steps", "2"), ("fps", True)):
        err = _error(client.post("/v1/videos", json={"model": "svd", "image": image, field: value}), 422)
        assert err["field"] == field, (field, value, err)
    err = _error(client.post("/v1/videos", json={"model": "svd", "image": image, "num_inference_steps": 401}), 422)
    assert err["allowed"] == {"minimum": 1, "maximum": 400}
    err = _error(client.post("/v1/videos", json={"model": "svd", "image": image, "scheduler": "plms"}), 422)
    assert err["field"] == "scheduler" and "euler" in err["allowed"]
    for field in ("bogus", "latents", "output_type", "generator"):
        err = _error(client.post("/v1/videos", json={"model": "svd", "image": image, field: 1}), 422)
        assert err["field"] == field and "num_inference_steps" in err["allowed"]
    err = _error(client.post("/v1/videos", json={"model": "svd", "image": image, "output_format": "avi"}), 422)
    assert err["field"] == "output_format" and err["allowed"] == ["gif", "mp4"]
    assert _error(client.post("/v1/videos", json={"model": "svd", "image": 12}), 422)["field"] == "image"
    # malformed JSON and base64, undecodable images: 400
    _error(client.post("/v1/videos", content=b'{"model": "svd",', headers={"content-type": "application/json"}), 400)
    _error(client.post("/v1/videos", json=["svd"]), 400)
    assert _error(client.post("/v1/videos", json={"model": "svd", "image": "not base64!"}), 400)["field"] == "image"
    not_an_image = base64.b64encode(b"hello, this is no image").decode()
    assert _error(client.post("/v1/videos", json={"model": "svd", "image": not_an_image}), 400)["field"] == "image"
    # body and decoded-image caps: 413 (a 2000x2000 blank PNG is ~4 KB but 4 Mpx: refused from its header)
    err = _error(client.post("/v1/videos", json={"model": "svd", "image": png_b64(2000, 2000, mode="L")}), 413)
    assert err["field"] == "image" and err["allowed"] == {"max_pixels": MAX_IMAGE_PIXELS}
    big = "A" * int(MAX_BODY_MB * 1024 * 1024 + 10)
    _error(client.post("/v1/videos", json={"model": "svd", "image": big}), 413)
    # unknown job ids: 404 on every job endpoint
    for path in ("/v1/videos/" + "0" * 32, "/v1/videos/" + "0" * 32 + "/content", "/v1/videos/../etc"):
        assert client.get(path).status_code == 404
    assert client.delete("/v1/videos/" + "0" * 32).status_code == 404
    # nothing above was queued
    assert metric(client.get("/metrics").text, "video_aot_queue_depth") == 0


def test_queue_full_then_cancel_queued_and_running(client):
    running = submit(client, num_inference_steps=300)
    status = wait_for(client, running, states=("running",), predicate=lambda s: s["progress"]["step"] >= 1, timeout=60)
    assert status["progress"]["total"] == 300
    queued = [submit(client, num_inference_steps=2) for _ in range(MAX_QUEUE)]
    assert client.get(f"/v1/videos/{queued[0]}").json()["queue_position"] == 1
    assert _error(client.get(f"/v1/videos/{queued[0]}/content"), 409)["allowed"] == ["succeeded"]
    # a full queue answers 429 with Retry-After, and does not take the job
    full = client.post("/v1/videos", json={"model": "svd", "image": png_b64(), "num_inference_steps": 2})
    assert full.status_code == 429 and int(full.headers["Retry-After"]) >= 1
    text = client.get("/metrics").text
    assert metric(text, "video_aot_queue_depth") == MAX_QUEUE
    assert metric(text, "video_aot_jobs", state="running") == 1
    assert metric(text, "video_aot_http_responses_total", code=429) >= 1
    # cancel a queued job: at once
    response = client.delete(f"/v1/videos/{queued[0]}")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert client.get(f"/v1/videos/{queued[0]}").json()["status"] == "cancelled"
    assert client.delete(f"/v1/videos/{queued[0]}").status_code == 200  # idempotent
    # cancel the running job: it stops at the next step boundary, long before its 300 steps
    response = client.delete(f"/v1/videos/{running}")
    assert response.status_code == 202 and response.json()["cancel_requested"] is True
    status = wait_for(client, running, timeout=30)
    assert status["status"] == "cancelled" and "step" in status["error"], status
    # the remaining queued job then runs
    assert wait_for(client, queued[1])["status"] == "succeeded"
    assert client.delete(f"/v1/videos/{queued[1]}").status_code == 409  # already finished


def test_metrics_change_as_jobs_run(client):
    before = client.get("/metrics")
    assert before.headers["content-type"].startswith("text/plain")
    before = before.text
    assert metric(before, "process_resident_memory_bytes") > 0
    assert metric(before, "video_aot_peak_rss_bytes") >= metric(before, "process_resident_memory_bytes") * 0.5
    assert metric(before, "video_aot_queue_capacity") == MAX_QUEUE
    response = client.post("/v1/videos", json={"model": "svd", "image": png_b64(), "num_inference_steps": 2})
    assert response.status_code == 202
    job_id = response.json()["id"]
    assert isinstance(response.json()["parameters"]["seed"], int)  # drawn at accept time, kept with the job
    assert wait_for(client, job_id)["status"] == "succeeded"
    after = client.get("/metrics").text

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("video_aot_jobs_finished_total", model="svd", state="succeeded") == 1
    assert delta("video_aot_jobs", state="succeeded") == 1
    assert delta("video_aot_stage_seconds_count", model="svd", stage="unet") == 2  # one per step
    for stage in ("image_encode", "vae_encode", "vae_decode", "denoise_step"):
        assert delta("video_aot_stage_seconds_count", model="svd", stage=stage) >= 1, stage
    assert delta("video_aot_stage_seconds_sum", model="svd", stage="unet") > 0
    assert delta("video_aot_job_run_seconds_count", model="svd") == 1
    assert delta("video_aot_http_responses_total", code=202) == 1
    assert metric(after, "video_aot_stage_seconds_bucket", model="svd", stage="unet", le="+Inf") == \
        metric(after, "video_aot_stage_seconds_count", model="svd", stage="unet")


def test_auth(svd_export, tmp_path, server):
    key_file = tmp_path / "keys"
    key_file.write_text("# tokens\nsecret-token-1\n")
    srv = Server([f"svd={svd_export}"], tmp_path / "data", tmp_path, "--api-key-file", str(key_file),
                 token="secret-token-1")
    try:
        srv.start()
        with srv.client(token="") as anonymous, srv.client(token="wrong") as wrong, srv.client() as good:
            assert anonymous.get("/healthz").status_code == 200  # the one open endpoint
            for method, path in (("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/v1/models"),
                                 ("GET", "/openapi.json"), ("GET", "/docs"), ("POST", "/v1/videos"),
                                 ("GET", "/v1/videos/" + "0" * 32), ("DELETE", "/v1/videos/" + "0" * 32)):
                for c in (anonymous, wrong):
                    response = c.request(method, path, json={"model": "svd"} if method == "POST" else None)
                    assert response.status_code == 401, (method, path)
                    assert response.headers["WWW-Authenticate"] == "Bearer"
            assert good.get("/v1/models").status_code == 200
            assert good.get("/metrics").status_code == 200
            job_id = submit(good, num_inference_steps=1)
            assert anonymous.get(f"/v1/videos/{job_id}/content").status_code == 401
            assert wait_for(good, job_id)["status"] == "succeeded"
            assert good.get(f"/v1/videos/{job_id}/content").status_code == 200
    finally:
        srv.stop()
    # and with auth off (the main server), no token is needed
    with server.client(token="") as anonymous:
        assert anonymous.get("/v1/models").status_code == 200


def test_restart_after_sigkill_loses_no_job(svd_export, tmp_path):
    data = tmp_path / "data"
    first = Server([f"svd={svd_export}"], data, tmp_path, "--max-queue", "4")
    second = Server([f"svd={svd_export}"], data, tmp_path, "--max-queue", "4")
    try:
        first.start()
        with first.client() as client:
            done = submit(client, num_inference_steps=1)
            assert wait_for(client, done)["status"] == "succeeded"
            interrupted = submit(client, num_inference_steps=8)
            queued = [submit(client, num_inference_steps=2) for _ in range(3)]
            wait_for(client, interrupted, states=("running",), predicate=lambda s: s["progress"]["step"] >= 1)
            assert [client.get(f"/v1/videos/{j}").json()["status"] for j in queued] == ["queued"] * 3
        first.kill()  # SIGKILL: no chance to write anything
        # what a SIGKILL during a video write leaves (issue 16.8), and a record without `seq` (16.9)
        orphan = data / "jobs" / interrupted / ".result.k3j2h1g0.mp4"
        orphan.write_bytes(b"")
        bad = data / "jobs" / ("b" * 32)
        bad.mkdir()
        (bad / "job.json").write_text(json.dumps({"id": "b" * 32, "model": "svd", "state": "queued"}))
        second.start()
        assert not orphan.exists() and (data / "quarantine" / ("b" * 32) / "job.json").is_file()
        assert "b" * 32 in second.log.read_text() and "quarantine" in second.log.read_text()
        with second.client() as client:
            assert client.get(f"/v1/videos/{done}/content").status_code == 200  # finished results survive
            for job_id in [interrupted] + queued:
                status = wait_for(client, job_id)
                assert status["status"] == "succeeded", status
                count, size = decode_video(client.get(f"/v1/videos/{job_id}/content").content, "mp4", tmp_path)
                assert (count, size) == (FRAMES, (WIDTH, HEIGHT))
            assert client.get(f"/v1/videos/{interrupted}").json()["attempts"] == 2
    finally:
        first.kill()
        second.stop()


# ----------------------------------------------------------------------------------------------- in process
def test_job_store_recovers_and_expires(tmp_path):
    from video_aot.runtime.jobs import JobStore

    store = JobStore(tmp_path, max_queue=3, max_attempts=2)
    a = store.submit("m", {"seed": 1}, {}, "mp4", 2)
    b = store.submit("m", {"seed": 2}, {}, "mp4", 2)
    c = store.submit("m", {"seed": 3}, {}, "gif", 2)
    assert store.submit("m", {}, {}, "mp4", 2) is None  # full
    assert store.next()["id"] == a["id"]  # running when the process "dies"
    (tmp_path / "jobs" / ("f" * 32)).mkdir()  # a job folder whose record was never written
    again = JobStore(tmp_path, max_queue=3, max_attempts=2)
    assert list(again.queue) == [a["id"], b["id"], c["id"]]  # the interrupted job first, order kept
    assert again.recovered["resumed"] == 1 and not (tmp_path / "jobs" / ("f" * 32)).exists()
    assert again.next()["attempts"] == 2
    third = JobStore(tmp_path, max_queue=3, max_attempts=2)  # it crashed the process twice: given up
    assert third.get(a["id"])["state"] == "failed" and list(third.queue) == [b["id"], c["id"]]
    job = third.next()
    (third.folder(job["id"]) / "result.mp4").write_bytes(b"video")
    third.finish(job["id"], "succeeded", result="result.mp4")
    assert third.expire(keep_seconds=3600) == 0
    assert third.expire(keep_seconds=-1) == 2  # b and the failed a
    assert not (third.folder(job["id"]) / "result.mp4").exists()
    assert job["id"] not in third.jobs  # memory does not grow with the jobs ever served
    assert third.get(job["id"])["expired"] is True  # but the id still answers, from disk
    assert JobStore(tmp_path, max_queue=3).get(job["id"])["state"] == "succeeded"


def test_request_schema_is_generic_over_families(svd_export):
    """The schema comes from __call__'s signature and the manifest, for any pipeline class."""
    from video_aot.runtime.base import ExportedPipeline
    from video_aot.runtime.manifest import verify_export
    from video_aot.runtime.request import RequestInvalid

    class NoGraphs:
        def load(self, path):
            return None

    class TextToVideo(ExportedPipeline):
        family = "example"
        image_inputs = ()

        def __call__(self, prompt: str | list | None = None, num_frames: int | None = None,
                     num_inference_steps: int = 50, guidance_scale: float = 9.0, negative_prompt: str | None = None,
                     latents: np.ndarray | None = None, prompt_embeds: np.ndarray | None = None, seed: int | None = None,
                     output_type: str = "np"):
            raise NotImplementedError

    pipe = TextToVideo(verify_export(svd_export, check_sums=False), NoGraphs())
    schema = pipe.request_schema()
    assert set(schema) == {"prompt", "num_frames", "num_inference_steps", "guidance_scale", "negative_prompt", "seed"}
    assert schema["prompt"] == {"type": "string", "required": True}
    assert "required" not in schema["negative_prompt"]
    assert schema["num_frames"]["enum"] == [FRAMES]
    assert pipe.validate_request({"prompt": "x", "num_frames": FRAMES}) == {"prompt": "x", "num_frames": FRAMES}
    with pytest.raises(RequestInvalid) as info:
        pipe.validate_request({"prompt": "x", "guidance_scale": 99.0})
    assert info.value.field == "guidance_scale" and info.value.allowed == {"minimum": 0.0, "maximum": 50.0}
    assert set(pipe.example_request()) == {"prompt", "num_inference_steps"}

    class Unannotated(TextToVideo):  # diffusers often leaves prompt unannotated
        def __call__(self, image, prompt=None, negative_prompt=None, prompt_embeds=None, negative_prompt_embeds=None,
                     resize: bool = False, generator=None):
            raise NotImplementedError

    Unannotated.image_inputs = ("image",)
    schema = Unannotated(verify_export(svd_export, check_sums=False), NoGraphs()).request_schema()
    assert schema == {"image": {"type": "image", "required": True}, "prompt": {"type": "string", "required": True},
                      "negative_prompt": {"type": "string"}, "resize": {"type": "boolean", "default": False}}


def test_load_script_serves_a_relative_export_path(svd_export, tmp_path, monkeypatch):
    """benchmarks/load.py --serve with the export given relative to the caller's directory (the
    server itself runs in its data dir): a short bounded run where every accepted job succeeds."""
    from video_aot.benchmarks.load import main as load_main

    monkeypatch.chdir(svd_export.parent)
    report = tmp_path / "load.json"
    assert load_main(["--serve", f"svd={svd_export.name}", "--clients", "2", "--inflight", "1", "--duration", "3",
                      "--steps", "1", "--max-queue", "2", "--data-dir", str(tmp_path / "data"),
                      "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["accepted"] >= 1 and result["succeeded"] == result["accepted"] and result["failed"] == 0


# ----------------------------------------------------------------------------------------------- hardening (issue 16)
def test_huge_integers_answer_422_with_the_range(client):
    """Integers past the int64/uint64 range (Python's json reads any size) are refused with the
    allowed range, never a 500 (issue 16.2)."""
    image = png_b64()
    for field, value in (("seed", 10**30), ("seed", -(10**30)), ("num_inference_steps", 10**30),
                         ("motion_bucket_id", 2**64), ("noise_aug_strength", 10**30), ("fps", 10**400),
                         ("max_guidance_scale", -(10**400))):
        err = _error(client.post("/v1/videos", json={"model": "svd", "image": image, field: value}), 422)
        assert err["field"] == field, (field, err)
        assert set(err["allowed"]) == {"minimum", "maximum"}, err
        assert "out of range" in err["message"]
    err = _error(client.post("/v1/videos", json={"model": "svd", "image": image, "seed": 10**30}), 422)
    assert err["allowed"] == {"minimum": 0, "maximum": 2**63 - 1}
    assert metric(client.get("/metrics").text, "video_aot_http_responses_total", code=500) == 0


def _service(svd_export, tmp_path, **settings):
    from video_aot.runtime.server import Service, Settings

    return Service(Settings(exports=[("svd", str(svd_export))], data_dir=str(tmp_path / "data"), **settings))


def test_server_errors_are_counted_and_answered(svd_export, tmp_path):
    """An unexpected exception in a handler answers a JSON 500 and counts in
    video_aot_http_responses_total{code="500"} (issue 16.2)."""
    from starlette.testclient import TestClient

    from video_aot.runtime.server import create_app

    service = _service(svd_export, tmp_path)

    def broken(body):
        raise TypeError("a bug")

    service.submit = broken
    app = TestClient(create_app(service), base_url="http://127.0.0.1", raise_server_exceptions=False)
    response = app.post("/v1/videos", json={"model": "svd"})
    assert response.status_code == 500
    assert "TypeError" in response.json()["error"]["message"]
    assert metric(app.get("/metrics").text, "video_aot_http_responses_total", code=500) == 1


def test_one_step_limit_one_message(client):
    """The server's --max-steps (400 here) is the one range every answer names (issue 16.11)."""
    image = png_b64()
    for steps in (0, 401, 10**6):
        err = _error(client.post("/v1/videos", json={"model": "svd", "image": image, "num_inference_steps": steps}), 422)
        assert err["field"] == "num_inference_steps" and err["allowed"] == {"minimum": 1, "maximum": 400}, err
        assert err["message"] == f"num_inference_steps={steps} is out of range; allowed: 1 to 400", err
    models = {m["name"]: m for m in client.get("/v1/models").json()["data"]}
    assert models["svd"]["parameters"]["num_inference_steps"]["maximum"] == 400
    body = client.get("/openapi.json").json()["paths"]["/v1/videos"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["properties"]["num_inference_steps"]["maximum"] == 400


def _app(service, host="127.0.0.1"):
    """The HTTP layer in process, without its lifespan (no device worker, no model loading)."""
    from starlette.testclient import TestClient

    from video_aot.runtime.server import create_app

    return TestClient(create_app(service), base_url=f"http://{host}", raise_server_exceptions=False)


def test_post_needs_json_and_a_host_of_this_server(svd_export, tmp_path):
    """POST /v1/videos answers 415 to any body not declared application/json (a text/plain POST
    from a web page needs no CORS preflight), and every path answers 421 to a Host header that
    is not a name of this server (DNS rebinding) (issue 16.7)."""
    service = _service(svd_export, tmp_path, allowed_hosts=["videos.example.org"])
    app = _app(service)
    body = json.dumps({"model": "svd", "image": png_b64()})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"content-type": content_type} if content_type else {}
        response = app.post("/v1/videos", content=body, headers=headers)
        assert response.status_code == 415, (content_type, response.text)
        assert response.json()["error"]["allowed"] == ["application/json"]
    # declared JSON goes on to the checks (the model is still loading here: 503)
    assert app.post("/v1/videos", content=body, headers={"content-type": "application/json; charset=utf-8"}
                    ).status_code == 503
    for host in ("127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000", "videos.example.org"):
        assert app.get("/healthz", headers={"host": host}).status_code == 200, host
    for host in ("attacker.example:8000", "127.0.0.1.attacker.example", "192.168.1.5:8000", "x" * 5000):
        response = app.get("/v1/models", headers={"host": host})
        assert response.status_code == 421, host
        assert "DNS rebinding" in response.json()["error"]["message"] and len(response.text) < 1000
        assert app.post("/v1/videos", content=body, headers={"host": host, "content-type": "application/json"}
                        ).status_code == 421
    # bound to every interface: an IP address is a name of this server, a DNS name still is not
    wildcard = _app(_service(svd_export, tmp_path / "any", host="0.0.0.0"))
    assert wildcard.get("/healthz", headers={"host": "192.168.1.5:8000"}).status_code == 200
    assert wildcard.get("/healthz", headers={"host": "attacker.example"}).status_code == 421


def test_small_answers(svd_export, tmp_path):
    """/docs needs no CDN; a 404 does not echo a long id back; an expired job shows no
    content_url; an undecodable image is named, not printed as a BytesIO repr (issue 16.11)."""
    from video_aot.runtime.server import ApiError, Service

    service = _service(svd_export, tmp_path)
    app = _app(service)
    docs = app.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert 'href="/openapi.json"' in docs.text and "/v1/videos" in docs.text
    assert "cdn" not in docs.text.lower() and "<script" not in docs.text.lower()
    assert app.get("/redoc").status_code == 404  # the other CDN page is gone
    long_id = "a" * 60_000  # (the in-process client caps URLs at 64 kB; a live server took 70 kB)
    for path in (f"/v1/videos/{long_id}", f"/v1/videos/{long_id}/content"):
        response = app.get(path)
        assert response.status_code == 404 and len(response.content) < 300, len(response.content)
        assert "60000 characters" in response.json()["error"]["message"]
    job = service.store.submit("svd", {"seed": 1}, {}, "mp4", 2)
    job = service.store.next()
    (service.store.folder(job["id"]) / "result.mp4").write_bytes(b"video")
    service.store.finish(job["id"], "succeeded", result="result.mp4")
    assert Service.status(service.store.get(job["id"]))["content_url"].endswith("/content")
    service.store.expire(keep_seconds=-1)
    status = app.get(f"/v1/videos/{job['id']}").json()
    assert status["status"] == "succeeded" and status["expired"] is True and "content_url" not in status
    assert app.get(f"/v1/videos/{job['id']}/content").status_code == 410
    for raw in (b"hello, this is no image", b"\x89PNG\r\n\x1a\n" + b"\0" * 40):
        with pytest.raises(ApiError) as info:
            service.decode_image("image", base64.b64encode(raw).decode())
        assert info.value.status == 400 and info.value.field == "image"
        assert "BytesIO" not in info.value.message and "0x" not in info.value.message, info.value.message
        assert info.value.message.startswith("image")


def test_port_in_use_fails_fast(svd_export, tmp_path):
    """serve-model on a port in use exits at once with a clear message, before loading any model
    (issue 16.11: it warmed up for 31 s, then aborted with rc 134)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "video_aot.runtime.server", f"svd={svd_export}", "--port",
                               str(port), "--data-dir", str(tmp_path / "data")], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
        seconds = time.monotonic() - start
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "in use" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert seconds < 20, seconds


def test_job_store_quarantines_bad_records_and_removes_orphans(tmp_path, caplog):
    """Recovery after a crash: temporary files of an interrupted write are deleted; a record
    without ``seq`` or that is no JSON is moved to quarantine/ with a warning; the other jobs
    survive (issues 16.8 and 16.9)."""
    from video_aot.runtime.jobs import JobStore

    store = JobStore(tmp_path, max_queue=4)
    good = store.submit("m", {"seed": 1}, {}, "mp4", 2)
    running = store.submit("m", {"seed": 2}, {}, "mp4", 2)
    no_seq = store.submit("m", {"seed": 3}, {}, "mp4", 2)
    garbage = store.submit("m", {"seed": 4}, {}, "mp4", 2)
    assert store.next()["id"] == good["id"]
    # SIGKILL during the mp4 write of `good`, and during a record write of `running`
    (store.folder(good["id"]) / ".result.k3j2h1g0.mp4").write_bytes(b"")
    (store.folder(running["id"]) / ".job.json.tmp-123-456").write_bytes(b'{"id": ')
    record = store.folder(no_seq["id"]) / "job.json"
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "seq"}))
    (store.folder(garbage["id"]) / "job.json").write_bytes(b"\xff\xfe not json")
    with caplog.at_level("WARNING", logger="video_aot.serve"):
        again = JobStore(tmp_path, max_queue=4)
    assert list(again.queue) == [good["id"], running["id"]]  # the others start without the bad records
    assert again.recovered["quarantined"] == 2 and again.recovered["orphans"] == 2
    assert list(store.folder(good["id"]).iterdir()) == [store.folder(good["id"]) / "job.json"]
    assert list(store.folder(running["id"]).iterdir()) == [store.folder(running["id"]) / "job.json"]
    quarantine = tmp_path / "quarantine"
    assert sorted(p.name for p in quarantine.iterdir()) == sorted([no_seq["id"], garbage["id"]])
    assert not store.folder(no_seq["id"]).exists() and again.get(no_seq["id"]) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(no_seq["id"] in w and "seq" in w and "quarantine" in w for w in warnings), warnings
    assert any(garbage["id"] in w and "cannot be read" in w for w in warnings), warnings
    assert JobStore(tmp_path, max_queue=4).recovered["quarantined"] == 0  # nothing left to move



def test_fuzz_the_openapi_description_no_server_error(svd_export, tmp_path):
    """Schemathesis over /openapi.json against a live server on 127.0.0.1: schema-conforming and
    schema-violating requests to every operation, at most 200 examples and 45 s, and not one 5xx
    answer (issue 16). A server of its own, so that fuzzed jobs (at most 2 steps) cannot hold up
    the other tests."""
    from collections import Counter

    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    srv = Server([f"svd={svd_export}"], tmp_path / "data", tmp_path, "--max-queue", "2", "--max-steps", "2",
                 "--max-body-mb", "0.25", "--max-image-pixels", "100000")
    try:
        srv.start()
        schema = schemathesis.openapi.from_url(f"{srv.url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.path for op in operations} >= {"/v1/videos", "/v1/videos/{job_id}", "/v1/models"}
        strategy = st.one_of([op.as_strategy(generation_mode=mode) for op in operations
                              for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)])
        seen, deadline = Counter(), time.monotonic() + 45

        @settings(max_examples=200, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def no_server_error(case):
            if time.monotonic() > deadline:
                return
            response = case.call(base_url=srv.url, timeout=30)
            seen[response.status_code] += 1
            assert response.status_code < 500, \
                f"{response.status_code} {response.text[:300]}\n{case.as_curl_command()}\n{srv.log_tail()}"

        no_server_error()
        print(f"schemathesis: {sum(seen.values())} requests, by status {dict(sorted(seen.items()))}")
        assert sum(seen.values()) >= 50, seen  # the run did cover something
        assert sum(n for code, n in seen.items() if code in (400, 404, 415, 422)) > 0, seen
        with srv.client() as client:
            text = client.get("/metrics").text
        assert metric(text, "video_aot_http_responses_total", code=500) == 0
    finally:
        srv.stop()
