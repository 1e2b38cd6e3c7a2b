"""video_aot.runtime: load an export and run it like the diffusers pipeline it came from."""
from __future__ import annotations

import importlib

from .manifest import ExportInvalid, ShapeMismatch, verify_export

# manifest "family" -> (runtime module, pipeline class)
PIPELINES = {
    "svd": ("svd", "StableVideoDiffusionPipeline"),
    "t2v": ("t2v", "select_pipeline"),  # TextToVideoSD / VideoToVideoSD share one export
    "cogvideox": ("cogvideox", "select_pipeline"),  # CogVideoX T2V / V2V share one export; I2V its own
}


def load_pipeline(export_dir, backend=None, check_sums: bool = True, pipeline: str | None = None,
                  **backend_options):
    """Verify ``export_dir`` (manifest, checksums) and return its pipeline.

    pipeline: for exports that serve more than one diffusers pipeline (the t2v family:
    "text2video" or "video2video"); None takes the one the manifest names.

    backend: None (MindSpore Lite when importable, else MindSpore), "mindspore", "lite", or an
    object with ``load(path) -> callable``."""
    from .backends import make_backend

    export = verify_export(export_dir, check_sums=check_sums)
    if export.family not in PIPELINES:
        raise ExportInvalid(f"{export.root}: family {export.family!r} has no runtime pipeline; "
                            f"supported: {sorted(PIPELINES)}")
    module, cls = PIPELINES[export.family]
    if backend is None or isinstance(backend, str):
        backend = make_backend(backend, **backend_options)
    if export.manifest.get("dtype") == "bf16" and getattr(backend, "device_target", None) == "CPU":
        raise ExportInvalid(f"{export.root} holds bf16 graphs; MindSpore 2.7.1 has no bf16 CPU kernels, so they run "
                            "only on Ascend (device_target='Ascend'). Export with --dtype fp32 or fp16 for the CPU.")
    pipeline_cls = getattr(importlib.import_module(f"{__package__}.{module}"), cls)
    if pipeline is not None:
        if isinstance(pipeline_cls, type):  # a family with a single pipeline class
            if pipeline not in (cls, export.manifest.get("pipeline")):
                raise ValueError(f"{export.root}: family {export.family!r} serves only {cls}, not {pipeline!r}")
            return pipeline_cls(export, backend)
        return pipeline_cls(export, backend, pipeline=pipeline)
    return pipeline_cls(export, backend)


__all__ = ["load_pipeline", "ExportInvalid", "ShapeMismatch"]
