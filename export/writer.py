"""Writing an export: trace each graph to MindIR, checksum every file, write the manifest,
and move the finished folder into place atomically.

The export is built in a hidden sibling folder and renamed into place only once every graph
and the manifest are written, so an interrupted export leaves nothing that looks like an export.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .graphs import GraphSpec, rel_l2

from video_aot.runtime.manifest import FORMAT_VERSION, MANIFEST, Manifest, sha256_file


# A stop asked for by a signal (export-model's SIGTERM handler). The handler raises KeyboardInterrupt at
# once, but one raised while MindSpore is calling back into Python during a compile can be swallowed there
# (seen: a SIGTERM landing in Primitive.__getattr__ under the tiny SVD UNet's compile, called from C++ as an
# attribute probe that clears any error; the export went on and wrote everything). So the request is also
# kept here and checked after every graph and before the export is moved into place.
_stop_requested: list = []


def request_stop(reason: str):
    _stop_requested.append(reason)


def check_stop():
    if _stop_requested:
        raise KeyboardInterrupt(_stop_requested[0])


class ExportError(RuntimeError):
    pass


def _graph_files(folder: Path, name: str) -> tuple[str, list[str]]:
    """The file to load and every file that belongs to graph ``name``. Networks over ~2 GB are
    split by MindSpore into NAME_graph.mindir plus NAME_variables/ (which holds the weights)."""
    single = folder / f"{name}.mindir"
    split = folder / f"{name}_graph.mindir"
    if split.is_file():
        variables = folder / f"{name}_variables"
        parts = sorted(str(p.relative_to(folder)) for p in variables.rglob("*") if p.is_file())
        return split.name, [split.name] + parts
    if single.is_file():
        return single.name, [single.name]
    raise ExportError(f"MindSpore wrote no MindIR for graph {name!r} in {folder}")


def trace_graph(folder: Path, spec: GraphSpec, cell, validate: bool = False, expand: bool = True) -> dict:
    """ms.export one cell with its declared static inputs; optionally check the written graph
    against the eager cell on the same dummy inputs. Returns the manifest entry.

    ``expand``: rewrite the written MindIR so that no elementwise op broadcasts a tensor input
    (runtime/backends.expand_broadcasts; the same values). MindSpore 2.7.1's CPU kernels keep about 4x a
    broadcasting op's output for the life of the compiled graph, which was most of a loaded graph's memory
    (benchmarks/NOTES.md, "Where the memory goes")."""
    import mindspore as ms

    from video_aot.runtime.backends import expand_mindir, load_graph_cell

    inputs = [ms.Tensor(a) for a in spec.dummy_inputs()]
    start = time.perf_counter()
    ms.export(cell, *inputs, file_name=str(folder / spec.name), file_format="MINDIR")
    seconds = time.perf_counter() - start
    load_file, files = _graph_files(folder, spec.name)
    entry = {"file": load_file, "files": files, **spec.to_json(), "export_seconds": round(seconds, 3)}
    if expand:
        start = time.perf_counter()
        entry["broadcasts_expanded"] = expand_mindir(folder / load_file, folder / load_file)
        entry["expand_seconds"] = round(time.perf_counter() - start, 3)
    if validate:
        eager = cell(*inputs)
        graph = load_graph_cell(folder / load_file)[0](*inputs)
        eager = eager if isinstance(eager, (tuple, list)) else (eager,)
        graph = graph if isinstance(graph, (tuple, list)) else (graph,)
        errors = [rel_l2(g.asnumpy(), e.asnumpy()) for g, e in zip(graph, eager)]
        entry["validation_rel_l2"] = errors
        if max(errors) > spec.tolerance:
            raise ExportError(f"graph {spec.name}: exported output differs from the eager network "
                              f"(relative L2 {max(errors):.3g} > tolerance {spec.tolerance})")
    return entry


def existing_export_key(out_dir: Path):
    manifest = out_dir / MANIFEST
    if not manifest.is_file():
        return None
    try:
        return json.loads(manifest.read_text()).get("export_key")
    except (OSError, ValueError):
        return None


def export_key(description: dict) -> str:
    """A hash of everything that determines the artifacts, to skip exports that are still valid."""
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


def check_replaceable(out_dir: Path):
    """``--force`` replaces an earlier export, never anything else: the folder must hold an export
    manifest, and every file in it must be that manifest or a file the manifest lists."""
    if not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder; --force replaces only an earlier export")
    manifest_path = out_dir / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        listed = set(manifest["files"]) if isinstance(manifest, dict) and "graphs" in manifest else None
    except (OSError, ValueError, KeyError, TypeError):
        listed = None
    present = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if not p.is_dir())
    if listed is None:
        if not present:
            return  # an empty folder holds nothing to lose
        raise ExportError(
            f"{out_dir} is not an export folder (no readable {MANIFEST}); --force replaces only an earlier "
            f"export and never deletes other files. Choose another --out, or empty the folder yourself.")
    foreign = [rel for rel in present if rel != MANIFEST and rel not in listed]
    if foreign:
        shown = ", ".join(foreign[:10]) + (" ..." if len(foreign) > 10 else "")
        raise ExportError(
            f"{out_dir} holds files that are not part of its export ({shown}); --force would delete them. "
            "Move them out of the folder first, or choose another --out.")


def remove_stale_partials(out_dir: Path):
    """Remove work folders that a killed export (SIGKILL, power loss) left next to ``out_dir``;
    a folder whose exporting process is still alive is left alone."""
    for folder in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
        pid = folder.name.rsplit(".partial-", 1)[1].split("-", 1)[0]
        alive = False
        if pid.isdigit():
            try:
                os.kill(int(pid), 0)
                alive = True
            except ProcessLookupError:
                alive = False
            except PermissionError:
                alive = True
        if not alive:
            shutil.rmtree(folder, ignore_errors=True)


def write_export(out_dir, graphs, manifest: dict, force: bool = False, validate: bool = False, log=print,
                 onnx: bool = False, expand_broadcasts: bool = True) -> Path:
    """``graphs``: list of (GraphSpec, cell_factory) where the factory builds the cell on demand
    (so only one network needs to be alive at a time). ``manifest``: family fields; the graph
    entries, checksums and versions are added here. An optional ``manifest["assets"]`` maps
    export-relative paths to source files (a tokenizer, say) that are copied into the export and
    checksummed like the graphs; the written manifest lists their relative paths. ``onnx``: also
    write NAME.onnx (and its weights, NAME.onnx.data) for every graph the ONNX exporter can take
    (export/onnx.py); each graph entry names its ONNX files, and ``manifest["onnx_unavailable"]`` names every other graph with the reason."""
    import mindspore as ms

    out_dir = Path(out_dir).resolve()
    key = manifest["export_key"]
    if out_dir.exists():
        if not force and existing_export_key(out_dir) == key:
            from video_aot.runtime.manifest import verify_export

            try:
                verify_export(out_dir)
                log(f"{out_dir}: up to date (same export key, checksums verified); nothing to do")
                return out_dir
            except Exception as err:  # stale or damaged: fall through to the --force advice
                log(f"{out_dir}: existing export fails verification ({err})")
        if not force:
            raise ExportError(f"{out_dir} already exists; pass --force to overwrite it")
        check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out_dir)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-{os.getpid()}-", dir=out_dir.parent))
    os.chmod(work, 0o755)
    try:
        entries, onnx_unavailable = {}, {}
        for spec, factory in graphs:
            log(f"tracing {spec.name}: inputs " + ", ".join(f"{t.name}{list(t.shape)}" for t in spec.inputs))
            cell = factory()
            entries[spec.name] = trace_graph(work, spec, cell, validate=validate, expand=expand_broadcasts)
            if onnx:
                from .onnx import OnnxUnavailable, trace_onnx

                try:
                    entries[spec.name]["onnx"] = trace_onnx(work, spec, cell, work / entries[spec.name]["file"])
                except OnnxUnavailable as err:
                    onnx_unavailable[spec.name] = str(err)
                    log(f"  no ONNX for {spec.name}: {err}")
            del cell
            check_stop()
        assets = dict(manifest.get("assets") or {})
        for rel, source in assets.items():
            target = work / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        files = {}
        for entry in entries.values():
            for rel in entry["files"] + (entry["onnx"]["files"] if "onnx" in entry else []):
                files[rel] = sha256_file(work / rel)
        for rel in assets:
            files[rel] = sha256_file(work / rel)
        full = {
            "format_version": FORMAT_VERSION,
            **manifest,
            **({"assets": sorted(assets)} if "assets" in manifest else {}),
            "graphs": entries,
            **({"onnx_unavailable": onnx_unavailable} if onnx else {}),
            "files": files,
            "mindspore_version": ms.__version__,
            "numpy_version": np.__version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        Manifest(full, source=f"{out_dir} (being written)")  # the runtime's checks, before anything is moved
        tmp = work / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(full, indent=2, sort_keys=False))
        os.replace(tmp, work / MANIFEST)
        check_stop()
        # swap into place: the old export (if any, with --force) is removed only after the new one is complete
        backup = None
        if out_dir.exists():
            backup = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            os.replace(out_dir, backup)
        os.replace(work, out_dir)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log(f"wrote {out_dir}")
    return out_dir
