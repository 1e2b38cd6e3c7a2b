"""A bounded load test of serve-model: N concurrent clients for a fixed time.

    python -m video_aot.benchmarks.load --url http://127.0.0.1:8000 --model NAME --clients 4 --duration 60
    python -m video_aot.benchmarks.load --serve EXPORT_DIR --max-queue 4 --clients 4 --duration 60

Each client keeps up to ``--inflight`` jobs outstanding: it submits, and when the service answers
429 it waits for Retry-After (capped) and tries again. After ``--duration`` no new job is
submitted and the accepted ones are awaited (at most ``--drain-timeout``). A sampler reads the
server's RSS from /metrics once a second.

Reports requests accepted, rejected with 429, succeeded and failed; p50/p95 time to result
(POST to the status poll that sees ``succeeded``); the server's RSS over the run. Exits non-zero
when an accepted job did not succeed or the RSS grew by more than ``--max-rss-growth-mb`` between
the first quarter of the jobs and the end.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FINAL = ("succeeded", "failed", "cancelled")


def percentile(values, q):
    return float(np.percentile(values, q)) if values else float("nan")


def example_body(model: dict, steps: int, output_format: str, seed: int) -> dict:
    """A valid request for any model, from the parameters GET /v1/models lists."""
    from PIL import Image

    shapes = model["shapes"]
    body = {"model": model["name"], "num_inference_steps": steps, "output_format": output_format, "seed": seed}
    for name, spec in model.get("parameters", {}).items():
        if not spec.get("required"):
            continue
        if spec["type"] == "image":
            rng = np.random.default_rng(seed)
            pixels = (rng.random((shapes.get("height", 64), shapes.get("width", 64), 3)) * 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            body[name] = base64.b64encode(buf.getvalue()).decode()
        elif spec["type"] == "string":
            body[name] = "a red ball rolling across green grass"
    if "seed" not in model.get("parameters", {"seed": 1}):
        body.pop("seed")
    return body


def rss_from_metrics(text: str):
    for line in text.splitlines():
        if line.startswith("process_resident_memory_bytes "):
            return float(line.split()[1])
    return None


def succeeded_from_metrics(text: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("video_aot_jobs_finished_total{") and 'state="succeeded"' in line:
            total += float(line.split()[-1])
    return total


class Load:
    def __init__(self, args, client, model: dict):
        self.args, self.client, self.model = args, client, model
        self.accepted = self.rejected = self.succeeded = self.failed = self.other_errors = 0
        self.times: list = []
        self.failures: list = []
        self.rss: list = []  # (seconds since start, rss bytes, jobs succeeded on the server)
        self.start = time.monotonic()
        self.stop_submitting = self.start + args.duration
        self.done = asyncio.Event()

    async def watch(self, job_id: str, submitted: float):
        deadline = self.stop_submitting + self.args.drain_timeout
        while time.monotonic() < deadline:
            response = await self.client.get(f"/v1/videos/{job_id}")
            status = response.json()
            if status["status"] in FINAL:
                break
            await asyncio.sleep(self.args.poll)
        else:
            self.failed += 1
            self.failures.append({"id": job_id, "status": "unfinished after the drain timeout"})
            return
        if status["status"] == "succeeded":
            elapsed = time.monotonic() - submitted
            content = await self.client.get(f"/v1/videos/{job_id}/content")
            if content.status_code == 200 and len(content.content) > 0:
                self.succeeded += 1
                self.times.append(elapsed)
                return
            status = {**status, "content_status": content.status_code}
        self.failed += 1
        self.failures.append(status)

    async def run_client(self, index: int):
        pending: set = set()
        seed = index * 100_000
        while time.monotonic() < self.stop_submitting:
            if len(pending) >= self.args.inflight:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                continue
            seed += 1
            body = example_body(self.model, self.args.steps, self.args.output_format, seed)
            submitted = time.monotonic()
            response = await self.client.post("/v1/videos", json=body)
            if response.status_code == 202:
                self.accepted += 1
                pending.add(asyncio.create_task(self.watch(response.json()["id"], submitted)))
            elif response.status_code == 429:
                self.rejected += 1
                wait = float(response.headers.get("Retry-After", "1"))
                await asyncio.sleep(min(wait, self.args.max_backoff, max(0.0, self.stop_submitting - time.monotonic())))
            else:
                self.other_errors += 1
                self.failures.append({"submit_status": response.status_code, "body": response.text[:300]})
                await asyncio.sleep(0.5)
        if pending:
            await asyncio.wait(pending)

    async def sample_rss(self):
        while not self.done.is_set():
            try:
                text = (await self.client.get("/metrics")).text
                rss = rss_from_metrics(text)
                if rss is not None:
                    self.rss.append((time.monotonic() - self.start, rss, succeeded_from_metrics(text)))
            except Exception:  # a missed sample is no reason to stop the run
                pass
            try:
                await asyncio.wait_for(self.done.wait(), timeout=self.args.sample_every)
            except asyncio.TimeoutError:
                pass

    async def run(self):
        sampler = asyncio.create_task(self.sample_rss())
        await asyncio.gather(*(self.run_client(i) for i in range(self.args.clients)))
        self.done.set()
        await sampler

    def report(self) -> dict:
        mb = 1024 * 1024
        rss = [r for _, r, _ in self.rss]
        out = {
            "model": self.model["name"], "clients": self.args.clients, "inflight_per_client": self.args.inflight,
            "duration_s": self.args.duration, "steps": self.args.steps,
            "wall_s": round(time.monotonic() - self.start, 1),
            "accepted": self.accepted, "rejected_429": self.rejected, "succeeded": self.succeeded,
            "failed": self.failed, "other_errors": self.other_errors,
            "time_to_result_s": {"p50": round(percentile(self.times, 50), 3), "p95": round(percentile(self.times, 95), 3),
                                 "max": round(max(self.times), 3) if self.times else None},
            "failures": self.failures[:10],
        }
        if rss:
            jobs = np.array([j for _, _, j in self.rss])
            base_jobs = jobs[0]
            quarter = base_jobs + (jobs[-1] - base_jobs) / 4
            after_quarter = [r for (_, r, j) in self.rss if j >= quarter]
            half = [(j, r) for (_, r, j) in self.rss if j >= base_jobs + (jobs[-1] - base_jobs) / 2]
            slope = None
            if len(half) > 2 and half[-1][0] > half[0][0]:
                x, y = np.array(half, dtype=float).T
                slope = float(np.polyfit(x, y / mb, 1)[0]) * 100  # MB per 100 jobs
            out["server_rss_mb"] = {
                "start": round(rss[0] / mb, 1), "end": round(rss[-1] / mb, 1), "min": round(min(rss) / mb, 1),
                "max": round(max(rss) / mb, 1),
                "after_first_quarter_of_jobs": round(after_quarter[0] / mb, 1) if after_quarter else None,
                "growth_after_first_quarter": round((rss[-1] - after_quarter[0]) / mb, 1) if after_quarter else None,
                "slope_mb_per_100_jobs_second_half": None if slope is None else round(slope, 2),
                "samples": len(rss), "jobs_served_during_run": int(jobs[-1] - base_jobs),
            }
            step = max(1, len(self.rss) // 12)
            out["server_rss_trace"] = [(round(t, 1), round(r / mb, 1), int(j - base_jobs)) for t, r, j in self.rss[::step]]
        return out


def summary(report: dict) -> str:
    t = report["time_to_result_s"]
    lines = [
        f"model {report['model']}: {report['clients']} clients x {report['inflight_per_client']} in flight, "
        f"{report['duration_s']:g} s of submitting ({report['wall_s']} s with the drain), "
        f"{report['steps']} steps per job",
        f"  accepted {report['accepted']}  rejected 429 {report['rejected_429']}  succeeded {report['succeeded']}  "
        f"failed {report['failed']}  other errors {report['other_errors']}",
        f"  time to result: p50 {t['p50']} s  p95 {t['p95']} s  max {t['max']} s",
    ]
    rss = report.get("server_rss_mb")
    if rss:
        lines.append(f"  server RSS (MB): start {rss['start']}  after the first quarter of the jobs "
                     f"{rss['after_first_quarter_of_jobs']}  end {rss['end']}  min {rss['min']}  max {rss['max']}  "
                     f"growth after the first quarter {rss['growth_after_first_quarter']}  "
                     f"slope {rss['slope_mb_per_100_jobs_second_half']} MB/100 jobs  "
                     f"({rss['samples']} samples, {rss['jobs_served_during_run']} jobs)")
        lines.append("  RSS trace (s, MB, jobs done): " + "  ".join(f"{a:g}s {b:g} {c}" for a, b, c in
                                                                   report["server_rss_trace"]))
    for failure in report["failures"]:
        lines.append(f"  failure: {failure}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args):
    import httpx

    port = free_port()
    data_dir = str(Path(args.data_dir or tempfile.mkdtemp(prefix="serve-load-")).resolve())
    log_path = Path(data_dir) / "server.log"
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    # the server runs in data_dir (its compile leftovers stay there): export paths must be absolute
    from video_aot.runtime.server import parse_export_args

    exports = [f"{name}={Path(path).resolve()}" for name, path in parse_export_args(args.serve)]
    cmd = [sys.executable, "-m", "video_aot.runtime.server", *exports, "--port", str(port), "--data-dir", data_dir,
           "--max-queue", str(args.max_queue), "--log-level", "warning"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=data_dir)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve-model exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"serve-model was not ready after {args.ready_timeout} s; see {log_path}")


async def main_async(args, url: str) -> dict:
    import httpx

    headers = {}
    if args.api_key_file:
        headers["Authorization"] = "Bearer " + Path(args.api_key_file).read_text().split()[0]
    limits = httpx.Limits(max_connections=args.clients * (args.inflight + 1) + 4)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as client:
        models = (await client.get("/v1/models")).json()["data"]
        names = [m["name"] for m in models]
        name = args.model or names[0]
        if name not in names:
            raise SystemExit(f"model {name!r} is not served; the server has {names}")
        load = Load(args, client, next(m for m in models if m["name"] == name))
        await load.run()
        return load.report()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m video_aot.benchmarks.load", description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running serve-model, e.g. http://127.0.0.1:8000")
    where.add_argument("--serve", nargs="+", metavar="EXPORT_DIR", help="start serve-model on these exports first")
    parser.add_argument("--model", help="model name (default: the first one served)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--inflight", type=int, default=2, help="jobs each client keeps outstanding")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of submitting")
    parser.add_argument("--drain-timeout", type=float, default=300.0, help="seconds to wait for accepted jobs after")
    parser.add_argument("--steps", type=int, default=2, help="num_inference_steps per job")
    parser.add_argument("--output-format", default="mp4", choices=("mp4", "gif"))
    parser.add_argument("--poll", type=float, default=0.1, help="status poll interval (s)")
    parser.add_argument("--max-backoff", type=float, default=2.0, help="cap on the Retry-After wait (s)")
    parser.add_argument("--sample-every", type=float, default=1.0, help="RSS sampling interval (s)")
    parser.add_argument("--api-key-file", help="bearer token file, as given to serve-model")
    parser.add_argument("--max-rss-growth-mb", type=float, default=64.0,
                        help="fail when the server RSS grows more than this after the first quarter of the jobs")
    parser.add_argument("--json", help="also write the report here")
    parser.add_argument("--max-queue", type=int, default=4, help="with --serve: the server's --max-queue")
    parser.add_argument("--data-dir", help="with --serve: the server's --data-dir (default: a temporary folder)")
    parser.add_argument("--ready-timeout", type=float, default=600.0, help="with --serve: seconds to wait for /readyz")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    proc = None
    try:
        if args.serve:
            proc, url = start_server(args)
        else:
            url = args.url.rstrip("/")
        report = asyncio.run(main_async(args, url))
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    if args.serve:
        report["server"] = {"max_queue": args.max_queue, "exports": args.serve}
    print(summary(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    problems = []
    if report["failed"] or report["accepted"] != report["succeeded"]:
        problems.append(f"{report['accepted']} jobs accepted but {report['succeeded']} succeeded")
    growth = report.get("server_rss_mb", {}).get("growth_after_first_quarter")
    if growth is not None and growth > args.max_rss_growth_mb:
        problems.append(f"server RSS grew {growth} MB after the first quarter of the jobs "
                        f"(limit {args.max_rss_growth_mb} MB)")
    for problem in problems:
        print(f"load: FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
