"""bench-model smoke run (the CI one): a tiny export measured against PyNative and torch in one
run. Checks that the record is valid and complete, that the gate passes against itself and
fails on a doctored baseline 15% better than the run, and that the history chart renders.
No test asserts a timing."""
from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from tiny import svd_snapshot

from video_aot.benchmarks import report
from video_aot.benchmarks.cli import main as bench_main
from video_aot.benchmarks.measure import FlopCounter, StageRecorder, summary
from video_aot.export.run import export_model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One smoke run: the tests' tiny SVD snapshot exported at 2 frames of 32x32, one denoising step;
    two rounds of the exported and torch processes (PyNative once)."""
    root = tmp_path_factory.mktemp("bench")
    svd_snapshot(root / "snapshot")
    export = export_model(str(root / "snapshot"), str(root / "export"), frames=2, height=32, width=32,
                          decode_chunk_size=1, log=lambda *a: None, onnx=False)
    history = root / "history"
    out = root / "record.json"
    proc = subprocess.run(
        [sys.executable, "-m", "video_aot.benchmarks.cli", str(export), "--tier", "tiny", "--steps", "1",
         "--warmup", "1", "--repeats", "1", "--rounds", "2", "--history-dir", str(history), "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"root": root, "record": out, "history": history, "stdout": proc.stdout}


def test_record_is_valid_and_complete(run):
    record = json.loads(run["record"].read_text())
    assert report.validate_record(record) == []
    assert record["tier"] == "tiny" and record["family"] == "svd"
    assert record["shapes"]["num_frames"] == 2 and record["shapes"]["height"] == 32
    for key in ("commit", "dirty"):
        assert key in record["git"]
    assert record["machine"]["cores"] >= 1 and record["versions"]["mindspore"]
    for stage in ("image_encode", "vae_encode", "denoise_step", "unet", "vae_decode", "end_to_end"):
        entry = record["stages"][stage]
        for kind in ("exported", "pynative", "torch"):
            assert set(entry[kind]) == {"median", "min", "max", "n"} and entry[kind]["n"] >= 1
        assert entry["ratio_pynative"] > 0 and entry["ratio_torch"] > 0
        assert entry["peak_rss_mb"] > 0
    unet = record["stages"]["unet"]
    # two rounds: the exported and torch samples are pooled, PyNative ran once, and the ratio to torch
    # is the median of the two per-round ratios
    assert record["settings"]["rounds"] == 2
    assert unet["exported"]["n"] == 2 and unet["torch"]["n"] == 2 and unet["pynative"]["n"] == 1
    assert len(unet["torch_ratio_per_round"]) == 2 and "pynative_ratio_per_round" not in unet
    assert unet["ratio_torch"] == pytest.approx(sum(unet["torch_ratio_per_round"]) / 2)
    assert unet["flops"] > 0 and 0 < unet["fraction_of_peak"]
    assert record["matmul_peak_gflops"]["peak"] > 0
    assert record["overhead_pct"]["n"] >= 1
    for kind in ("exported", "pynative", "torch"):
        assert record["cold_start"][kind]["load_seconds"] > 0
        assert "unet" in record["cold_start"][kind]["first_call"]
    assert record["export"]["graphs"]["unet"] is not None
    assert record["peak_rss_mb"]["run"] > 0
    # the same record went to the history, and the table was printed
    assert len(list(run["history"].glob("*.json"))) == 1
    assert "exported" in run["stdout"] and "/torch" in run["stdout"]


def _doctored(record: dict, factor: float) -> dict:
    """A baseline whose ratios and peak memory are ``factor`` times the run's."""
    base = copy.deepcopy(record)
    for entry in base["stages"].values():
        for key in list(entry):
            if key.startswith("ratio_") or key == "peak_rss_mb":
                entry[key] = entry[key] * factor if entry[key] else entry[key]
    base["peak_rss_mb"]["exported_process"] *= factor
    return base


def test_gate_passes_against_itself_and_fails_on_a_better_baseline(run, tmp_path, capsys):
    record = json.loads(run["record"].read_text())
    same = tmp_path / "same.json"
    same.write_text(json.dumps(record))
    assert bench_main(["--compare", str(same), "--record", str(run["record"]), "--threshold", "0.10"]) == 0
    better = tmp_path / "better.json"
    better.write_text(json.dumps(_doctored(record, 0.85)))  # 15% better than the run
    assert bench_main(["--compare", str(better), "--record", str(run["record"]), "--threshold", "0.10"]) == 1
    assert "REGRESSION" in capsys.readouterr().out
    # within the threshold: 5% better still passes
    close = tmp_path / "close.json"
    close.write_text(json.dumps(_doctored(record, 0.95)))
    assert bench_main(["--compare", str(close), "--record", str(run["record"]), "--threshold", "0.10"]) == 0
    assert "measured on" not in capsys.readouterr().out
    # a baseline from another CPU is still gated, with a warning that the ratios depend on the machine
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**record, "machine": {**record["machine"], "cpu_model": "Another CPU"}}))
    assert bench_main(["--compare", str(other), "--record", str(run["record"]), "--threshold", "0.10"]) == 0
    assert "baseline was measured on 'Another CPU'" in capsys.readouterr().out


def test_history_chart_renders(run, tmp_path):
    png = tmp_path / "history.png"
    assert bench_main(["--plot", "--history-dir", str(run["history"]), "--plot-out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_committed_baselines_are_complete():
    paths = sorted(report.BASELINE_DIR.glob("*.json"))
    names = {p.name for p in paths}
    assert {"svd-xt-tiny.json", "svd-xt-small.json"} <= names, names
    for path in paths:
        record = json.loads(path.read_text())
        assert path.stem.endswith("-" + record["tier"]) and report.validate_record(record) == [], path


# ----------------------------------------------------------------------------- helpers
def test_summary_and_flop_counter():
    import mindspore as ms
    import numpy as np
    from mindspore import ops

    assert summary([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        recorder = StageRecorder()
        counter = FlopCounter(recorder)
        recorder.listeners.append(counter.stage_done)
        a = ms.Tensor(np.ones((2, 8, 16), np.float32))
        b = ms.Tensor(np.ones((2, 16, 4), np.float32))
        x = ms.Tensor(np.ones((1, 3, 8, 8), np.float32))
        w = ms.Tensor(np.ones((5, 3, 3, 3), np.float32))
        with counter, recorder.stage("unet"):
            ops.bmm(a, b)                                   # 2 * 2*8*4 * 16
            ops.matmul(a[0], b[0])                          # 2 * 8*4 * 16
            ops.conv2d(x, w, None, 1, "pad", 1)             # 2 * 5*8*8 * 27
        assert counter.calls["unet"] == [2 * 64 * 16 + 2 * 32 * 16 + 2 * 320 * 27]
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)


def test_shapes_override_takes_a_tier_or_key_values(capsys):
    from video_aot.benchmarks.cli import parse_shapes

    assert parse_shapes("small", "svd-xt") == {"frames": 4, "height": 64, "width": 64, "decode_chunk_size": 2,
                                                "batch": 1}
    assert parse_shapes("frames=8,width=96", "svd-xt") == {"frames": 8, "width": 96}
    for bad in ("frames", "depth=3", "frames=0", "frames=x", "huge"):
        with pytest.raises(ValueError, match="--shapes takes"):
            parse_shapes(bad, "svd-xt")
    with pytest.raises(SystemExit):
        bench_main(["some-export", "--shapes", "small"])
    assert "--shapes goes with --model" in capsys.readouterr().err


def test_build_request_uses_each_pipelines_own_names():
    from video_aot.benchmarks.worker import build_request

    def t2v_zero(prompt, video_length=8, height=None, width=None, num_inference_steps=50, t0=44, t1=47,
                 output_type="tensor"):
        pass

    def svd(image, height=576, width=1024, num_frames=None, num_inference_steps=25, decode_chunk_size=None,
            output_type="pil"):
        pass

    shapes = {"video_length": 3, "height": 32, "width": 48, "decode_chunk_size": 2}
    request = build_request(t2v_zero, shapes, steps=3)
    assert request["video_length"] == 3 and (request["t0"], request["t1"]) == (1, 2)
    assert "num_frames" not in request and "image" not in request and request["output_type"] == "np"
    request = build_request(svd, {"num_frames": 4, "height": 64, "width": 64, "decode_chunk_size": 2}, steps=2)
    assert request["num_frames"] == 4 and "t0" not in request and "video_length" not in request


def test_full_tier_reads_the_preset_its_snapshot_comes_from():
    """A model named after its family (animatediff) takes its full-tier shapes from the preset its
    full-<model> snapshot is generated from (animatediff-v1-5-2)."""
    from video_aot.benchmarks.tiers import get_tier, tier_shapes
    from video_aot.export.sources import PRESET_DIR

    preset = json.loads((PRESET_DIR / "animatediff-v1-5-2" / "preset.json").read_text())["default_shapes"]
    shapes = tier_shapes(get_tier("full"), "animatediff")
    assert (shapes["frames"], shapes["height"], shapes["width"]) == (preset["frames"], preset["height"],
                                                                     preset["width"])
    with pytest.raises(ValueError, match="no preset"):
        tier_shapes(get_tier("full"), "no-such-model")
