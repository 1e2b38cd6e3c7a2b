"""video_aot.runtime: load an export and run it like the diffusers pipeline it came from."""
from __future__ import annotations

from .manifest import ExportInvalid, ShapeMismatch, check_export_sums, verify_export


def load_pipeline(export_dir, backend=None, check_sums: bool = True, pipeline: str | None = None,
                  **backend_options):
    """Verify ``export_dir`` (manifest, checksums) and return its pipeline.

    pipeline: for exports that serve more than one diffusers pipeline (the t2v family serves
    TextToVideoSDPipeline and VideoToVideoSDPipeline, say): a diffusers class name or a short name
    ("text2video", "video2video"); None takes the one the manifest names.

    backend: None, "mindspore", "lite", "onnxruntime", or an object with ``load(path) -> callable``.
    None picks onnxruntime for an export that holds an ONNX file for every graph (export-model's default)
    when onnxruntime is installed and no MindSpore option is given (benchmarks/NOTES.md: a fraction of
    MindSpore's memory and cold start on this CPU), else MindSpore Lite when importable, else MindSpore."""
    from .backends import make_backend, onnx_serves
    from .families import family

    export = verify_export(export_dir, check_sums=False)  # the sums once the backend, so the artifact, is known
    try:
        spec = family(export.family)
    except ValueError as err:
        raise ExportInvalid(f"{export.root}: {err}") from None
    cls = spec.pipeline_class(pipeline if pipeline is not None else export.manifest["pipeline"])
    cls.check_export(export)
    if backend is None and not backend_options and onnx_serves(export):
        backend = "onnxruntime"
    if backend is None or isinstance(backend, str):
        backend = make_backend(backend, **backend_options)
    if check_sums:
        check_export_sums(export, artifact=getattr(backend, "artifact", "mindir"))
    bf16 = [name for name in export.manifest["graphs"] if export.manifest.graph_dtype(name) == "bf16"]
    if bf16 and getattr(backend, "device_target", None) == "CPU":
        plan = export.manifest.get("dtype_plan") or {}
        components = sorted(c for c, d in plan.items() if d == "bf16")
        raise ExportInvalid(
            f"{export.root} holds bf16 graphs ({', '.join(bf16)}); MindSpore 2.7.1 has no bf16 CPU kernels, so they "
            "run only on Ascend (device_target='Ascend'). For the CPU, export with --dtype fp32 or fp16"
            + (f", or give {', '.join(components)} fp16 or fp32 in a per-component --dtype (e.g. "
               f"{','.join(f'{c}=fp16' for c in components)})" if components and len(components) < len(plan) else "")
            + ".")
    return cls(export, backend)


__all__ = ["load_pipeline", "ExportInvalid", "ShapeMismatch"]
