"""The job store of serve-model: every accepted job and every finished result on disk, written
atomically, so that a crash or a restart loses nothing the service accepted.

Layout under the data dir::

    jobs/<id>/job.json        the record (state, request, timestamps, error); replaced atomically
    jobs/<id>/<input>.png     decoded input images, re-encoded as PNG
    jobs/<id>/result.<fmt>    the video, renamed into place before the record says "succeeded"

A record is written to a temporary file, fsynced and renamed over the old one, then the folder
is fsynced: a reader sees the old record or the new one, never half of one. Temporary files
start with a dot; those a crash left behind are removed when the store starts again. A record
that cannot be read or lacks a field is moved to ``quarantine/<id>`` next to ``jobs/``, with a
warning, and the store starts without it.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections import deque
from pathlib import Path

log = logging.getLogger("video_aot.serve")

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
RECORD = "job.json"
# the fields of a record and the types recovery checks; submit() writes all of them
RECORD_FIELDS = {
    "id": str, "seq": int, "model": str, "state": str, "params": dict, "inputs": list, "output_format": str,
    "total_steps": int, "created_at": (int, float), "started_at": (int, float, type(None)),
    "finished_at": (int, float, type(None)), "attempts": int, "error": (str, type(None)), "result": (str, type(None)),
}


def record_problem(job, folder_name: str) -> str | None:
    """Why a record read from disk cannot be used, or None when it can."""
    if not isinstance(job, dict):
        return f"the record is a JSON {type(job).__name__}, not an object"
    missing = [k for k in RECORD_FIELDS if k not in job]
    if missing:
        return f"the record lacks {missing}"
    wrong = [k for k, kind in RECORD_FIELDS.items() if not isinstance(job[k], kind) or
             (isinstance(job[k], bool) and kind is int)]
    if wrong:
        return f"the record has fields of the wrong type: {wrong}"
    if job["id"] != folder_name:
        return f"the record's id {job['id'][:40]!r} is not its folder's name"
    if job["state"] not in STATES:
        return f"unknown state {job['state'][:40]!r}"
    return None


def _fsync_dir(path: Path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes):
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class JobStore:
    """Job records on disk plus the in-memory FIFO of queued ids. Thread-safe: the HTTP handlers
    and the worker share it."""

    def __init__(self, data_dir, max_queue: int, max_attempts: int = 3):
        self.root = Path(data_dir).resolve() / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_queue = max_queue
        self.max_attempts = max_attempts
        self.lock = threading.Condition()
        self.jobs: dict[str, dict] = {}
        self.queue: deque[str] = deque()
        self.progress: dict[str, tuple[int, int]] = {}  # running job id -> (step, total); memory only
        self.cancel_requested: set[str] = set()
        self._seq = 0
        self.recovered = self._recover()

    # ------------------------------------------------------------------ disk
    def folder(self, job_id: str) -> Path:
        if not JOB_ID.match(job_id):
            raise KeyError(job_id)
        return self.root / job_id

    def _save(self, job: dict):
        folder = self.root / job["id"]
        write_atomic(folder / RECORD, json.dumps(job, indent=1).encode())

    def _recover(self) -> dict:
        """Read every record. Queued jobs go back on the queue in their original order; a job that
        was running when the process died is queued again (it fails after ``max_attempts`` starts,
        so a job that crashes the process cannot crash it forever)."""
        found = []
        counts = {"requeued": 0, "resumed": 0, "gave_up": 0, "finished": 0, "quarantined": 0, "orphans": 0}
        for folder in sorted(self.root.iterdir()):
            record = folder / RECORD
            if not (folder.is_dir() and JOB_ID.match(folder.name)):
                continue
            if not record.is_file():  # accepted never completed: the 202 was not sent
                shutil.rmtree(folder, ignore_errors=True)
                continue
            counts["orphans"] += self._remove_orphans(folder)
            try:
                job = json.loads(record.read_text())
                problem = record_problem(job, folder.name)
            except (OSError, ValueError) as err:  # unreadable, not UTF-8, not JSON
                problem = f"the record cannot be read: {type(err).__name__}: {err}"
            if problem is not None:
                self._quarantine(folder, problem)
                counts["quarantined"] += 1
                continue
            found.append(job)
        for job in sorted(found, key=lambda j: j["seq"]):
            self._seq = max(self._seq, job["seq"])
            if job.get("expired"):
                continue  # answered from disk by get()
            self.jobs[job["id"]] = job
            if job["state"] == "running":
                if job.get("attempts", 0) >= self.max_attempts:
                    job.update(state="failed", finished_at=time.time(),
                               error=f"the service stopped while running this job {job['attempts']} times; given up")
                    counts["gave_up"] += 1
                else:
                    job["state"] = "queued"
                    counts["resumed"] += 1
                self._save(job)
            if job["state"] == "queued":
                self.queue.append(job["id"])
                counts["requeued"] += 1
            elif job["state"] in FINISHED:
                counts["finished"] += 1
        return counts

    @staticmethod
    def _remove_orphans(folder: Path) -> int:
        """Delete the temporary files a crash left in a job folder (``.result.*.mp4`` from a video
        write, ``.job.json.tmp-*`` from a record write): every dot-file. Returns how many."""
        removed = 0
        for path in folder.iterdir():
            if path.name.startswith(".") and path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def _quarantine(self, folder: Path, problem: str):
        """Move a job folder whose record cannot be used out of ``jobs/``, keeping it for a person to
        look at; the store starts without it."""
        target = self.root.parent / "quarantine" / folder.name
        target.parent.mkdir(exist_ok=True)
        if target.exists():
            target = target.with_name(f"{folder.name}-{time.time_ns()}")
        try:
            os.replace(folder, target)
        except OSError as err:
            log.warning("job %s: %s; moving it to %s failed (%s), so it is skipped", folder.name, problem, target, err)
            return
        log.warning("job %s: %s; moved it to %s and started without it", folder.name, problem, target)

    # ------------------------------------------------------------------ submit / read
    def submit(self, model: str, params: dict, files: dict, output_format: str, total_steps: int) -> dict | None:
        """Accept a job: write its inputs and record, then queue it. None when the queue is full."""
        with self.lock:
            if len(self.queue) >= self.max_queue:
                return None
            self._seq += 1
            job = {
                "id": uuid.uuid4().hex, "seq": self._seq, "model": model, "state": "queued",
                "params": params, "inputs": sorted(files), "output_format": output_format,
                "total_steps": total_steps, "created_at": time.time(), "started_at": None,
                "finished_at": None, "attempts": 0, "error": None, "result": None,
            }
            folder = self.root / job["id"]
            folder.mkdir()
            for name, data in files.items():
                write_atomic(folder / f"{name}.png", data)
            self._save(job)
            self.jobs[job["id"]] = job
            self.queue.append(job["id"])
            self.lock.notify_all()
            return dict(job)

    def get(self, job_id: str) -> dict | None:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                return self._tombstone(job_id)
            job = dict(job)
            if job["state"] == "running" and job_id in self.progress:
                job["step"], job["total_steps"] = self.progress[job_id]
            job["queue_position"] = (list(self.queue).index(job_id) + 1) if job["state"] == "queued" else None
            return job

    def _tombstone(self, job_id: str) -> dict | None:
        """The record of a job whose files expired: kept on disk only, so memory does not grow with
        the number of jobs ever served."""
        if not JOB_ID.match(job_id):
            return None
        try:
            job = json.loads((self.root / job_id / RECORD).read_text())
        except (OSError, ValueError):
            return None
        return job if job.get("expired") else None

    def counts(self) -> dict:
        with self.lock:
            out = {state: 0 for state in STATES}
            for job in self.jobs.values():
                out[job["state"]] += 1
            return out

    def depth(self) -> int:
        with self.lock:
            return len(self.queue)

    # ------------------------------------------------------------------ worker side
    def next(self, timeout: float = 0.5) -> dict | None:
        """Pop the oldest queued job and mark it running (on disk first)."""
        with self.lock:
            if not self.queue:
                self.lock.wait(timeout)
            if not self.queue:
                return None
            job = self.jobs[self.queue.popleft()]
            job.update(state="running", started_at=time.time(), attempts=job.get("attempts", 0) + 1)
            self._save(job)
            self.progress[job["id"]] = (0, job["total_steps"])
            return dict(job)

    def set_progress(self, job_id: str, step: int, total: int):
        with self.lock:
            self.progress[job_id] = (step, total)

    def finish(self, job_id: str, state: str, error: str | None = None, result: str | None = None):
        with self.lock:
            job = self.jobs[job_id]
            job.update(state=state, finished_at=time.time(), error=error, result=result)
            self._save(job)
            self.progress.pop(job_id, None)
            self.cancel_requested.discard(job_id)
            self.lock.notify_all()

    def requeue(self, job_id: str):
        """Put an interrupted job back at the head of the queue (service shutting down)."""
        with self.lock:
            job = self.jobs[job_id]
            job.update(state="queued", started_at=None, attempts=max(0, job.get("attempts", 1) - 1))
            self._save(job)
            self.progress.pop(job_id, None)
            self.queue.appendleft(job_id)

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued job at once, or ask a running one to stop at its next step boundary.
        Returns the job's state after the call (None if unknown)."""
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            if job["state"] == "queued":
                self.queue.remove(job_id)
                job.update(state="cancelled", finished_at=time.time(), error="cancelled by the client")
                self._save(job)
            elif job["state"] == "running":
                self.cancel_requested.add(job_id)
            return job["state"]

    def is_cancelled(self, job_id: str) -> bool:
        with self.lock:
            return job_id in self.cancel_requested

    # ------------------------------------------------------------------ retention
    def expire(self, keep_seconds: float) -> int:
        """Delete the files of jobs that finished more than ``keep_seconds`` ago. The record stays
        (a few hundred bytes, marked ``expired``, on disk only) so that the job id still answers with
        its state."""
        now = time.time()
        removed = 0
        with self.lock:
            old = [j for j in self.jobs.values()
                   if j["state"] in FINISHED and not j.get("expired") and now - (j["finished_at"] or now) > keep_seconds]
            for job in old:
                folder = self.root / job["id"]
                for path in folder.iterdir():
                    if path.name != RECORD:
                        path.unlink(missing_ok=True)
                job.update(expired=True, result=None, params={}, inputs=[])
                self._save(job)
                del self.jobs[job["id"]]
                removed += 1
        return removed
