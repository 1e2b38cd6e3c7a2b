"""The export-to-runtime contract: one typed manifest module, used by the writer (export/writer.py)
and by the runtime. It holds the format version, the checksums, the static shapes, the latent layout
and every graph's named inputs and outputs, and it checks a manifest before anything trusts it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
# axis letters of a latent layout: B batch, F frames, C channels, H/W latent height/width, S tokens
LAYOUT_AXES = set("BFCHWS")


class ExportInvalid(RuntimeError):
    """The export folder is missing, tampered with, or does not fit this runtime."""


class ShapeMismatch(ValueError):
    """A request that does not fit the shapes fixed at export time."""


def sha256_file(path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple
    dtype: str = "float32"

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, raw: dict) -> "TensorSpec":
        return cls(raw["name"], tuple(raw["shape"]), raw["dtype"])


@dataclass(frozen=True)
class GraphEntry:
    name: str
    file: str  # the file to load, relative to the export
    files: tuple  # every file of the graph (a split export has a variables folder too)
    inputs: tuple  # TensorSpec, in call order
    outputs: tuple
    # export-model --onnx: the ONNX file, then its external weights (an older export: the file alone)
    onnx_files: tuple = ()

    @classmethod
    def from_json(cls, name: str, raw: dict) -> "GraphEntry":
        return cls(name, raw["file"], tuple(raw.get("files", [raw["file"]])),
                   tuple(TensorSpec.from_json(t) for t in raw["inputs"]),
                   tuple(TensorSpec.from_json(t) for t in raw["outputs"]),
                   tuple(raw["onnx"].get("files", [raw["onnx"]["file"]])) if "onnx" in raw else ())

    @property
    def onnx(self) -> str | None:
        """The graph's ONNX file, relative to the export (None: exported with --no-onnx)."""
        return self.onnx_files[0] if self.onnx_files else None


def _inside(root: Path, rel: str) -> bool:
    """A manifest path must be relative and stay inside the export folder."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or "\\" in rel or not rel:
        return False
    return (root / rel).resolve().is_relative_to(root.resolve())


class Manifest(dict):
    """The manifest as written (a dict, so that family fields read as ``manifest[key]``), checked on
    construction, with typed accessors for the fields every family has."""

    REQUIRED = ("format_version", "family", "pipeline", "shapes", "graphs", "files")

    def __init__(self, raw: dict, source: str = MANIFEST):
        super().__init__(raw)
        self.source = source
        version = self.get("format_version")
        if version != FORMAT_VERSION:
            raise ExportInvalid(f"{source}: format_version {version!r}, this runtime reads {FORMAT_VERSION}; "
                                "re-export with export-model")
        missing = [k for k in self.REQUIRED if k not in self]
        if missing:
            raise ExportInvalid(f"{source}: manifest has no {missing} entries")
        self.graph_entries = {}
        for name, raw_graph in self["graphs"].items():
            try:
                self.graph_entries[name] = GraphEntry.from_json(name, raw_graph)
            except (KeyError, TypeError, ValueError) as err:
                raise ExportInvalid(f"{source}: graph {name!r} has a malformed entry ({err!r})") from None
        layout, shape = self.get("latent_layout"), self.get("latent_shape")
        if layout is not None and (len(layout) != len(shape or ()) or not set(layout) <= LAYOUT_AXES):
            raise ExportInvalid(f"{source}: latent_layout {layout!r} does not name the axes of latent_shape {shape}")

    @property
    def family(self) -> str:
        return self["family"]

    @property
    def shapes(self) -> dict:
        return self["shapes"]

    def latent_axes(self) -> dict:
        """Axis letter -> size of one sample's latents, e.g. {"F": 5, "C": 4, "H": 4, "W": 6}."""
        return dict(zip(self["latent_layout"], self["latent_shape"]))

    def graph_dtype(self, name: str) -> str:
        """The dtype graph ``name`` computes in (its component's in the export's dtype plan); its inputs
        and outputs are the TensorSpecs'. Manifests without per-graph dtypes have one for every graph."""
        one = self.get("dtype") if self.get("dtype") in ("fp32", "fp16", "bf16") else "fp32"
        return self["graphs"][name].get("dtype", one)


@dataclass(frozen=True)
class Export:
    root: Path
    manifest: Manifest

    @property
    def family(self) -> str:
        return self.manifest.family

    @property
    def shapes(self) -> dict:
        return self.manifest.shapes

    def graph_path(self, name: str, artifact: str = "mindir") -> Path:
        """The file of graph ``name`` to load: its MindIR, or with ``artifact="onnx"`` its ONNX file."""
        graphs = self.manifest["graphs"]
        if name not in graphs:
            raise ExportInvalid(f"{self.root}: the export has no graph {name!r}; it has {sorted(graphs)}")
        if artifact == "onnx":
            entry = self.manifest.graph_entries[name]
            if entry.onnx is None:
                unavailable = self.manifest.get("onnx_unavailable")
                why = ("it was exported with --no-onnx; re-export without it" if unavailable is None
                       else unavailable.get(name, "the manifest gives no reason"))
                raise ExportInvalid(f"{self.root}: graph {name} has no ONNX artifact ({why})")
            return self.root / entry.onnx
        return self.root / graphs[name]["file"]

    def describe_shapes(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.shapes.items())


def read_manifest(root) -> Manifest:
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise ExportInvalid(f"{root} is not an export: {MANIFEST} is missing (run export-model first)")
    try:
        raw = json.loads(path.read_text())
    except ValueError as err:
        raise ExportInvalid(f"{path} is not valid JSON: {err}") from err
    if not isinstance(raw, dict):
        raise ExportInvalid(f"{path} does not hold a manifest object")
    return Manifest(raw, source=str(path))


def verify_export(root, check_sums: bool = True, artifact: str | None = None) -> Export:
    """The export at ``root``, after checking that every listed file lies inside it and exists, that
    every graph's files are listed, and (``check_sums``) the sha256 of the files a load reads
    (``check_export_sums``)."""
    root = Path(root).resolve()
    manifest = read_manifest(root)
    for rel in manifest["files"]:
        if not _inside(root, rel):
            raise ExportInvalid(f"{root}: the manifest lists {rel!r}, a path outside the export folder; refusing it")
        if not (root / rel).is_file():
            raise ExportInvalid(f"{root}: file {rel} listed in the manifest is missing")
    for name, entry in manifest.graph_entries.items():
        for rel in entry.files + entry.onnx_files:
            if not _inside(root, rel):
                raise ExportInvalid(f"{root}: graph {name} names {rel!r}, a path outside the export folder")
            if rel not in manifest["files"]:
                raise ExportInvalid(f"{root}: graph {name} file {rel} has no checksum in the manifest")
    export = Export(root, manifest)
    if check_sums:
        check_export_sums(export, artifact)
    return export


def check_export_sums(export: Export, artifact: str | None = None):
    """Hash the files of a verified export against the manifest. ``artifact`` ("mindir" or "onnx"):
    the graphs will be loaded from these files, so the other kind's graph files are not hashed (an
    export with ONNX files holds every graph's weights twice; hashing both doubles the load's reading)."""
    unread = set()
    for entry in export.manifest.graph_entries.values():
        if artifact == "onnx" and entry.onnx_files:
            unread.update(entry.files)
        elif artifact == "mindir":
            unread.update(entry.onnx_files)
    for rel, expected in export.manifest["files"].items():
        if rel in unread:
            continue
        actual = sha256_file(export.root / rel)
        if actual != expected:
            raise ExportInvalid(
                f"{export.root}: checksum mismatch for {rel} (manifest {expected[:12]}..., file {actual[:12]}...); "
                "the artifact was modified or corrupted - re-export it"
            )


def mindir_input_shapes(path) -> list | None:
    """The input shapes a MindIR graph file was traced with (None when the file holds the weights
    too and is too large to parse cheaply)."""
    path = Path(path)
    if path.stat().st_size > (256 << 20):
        return None
    from mindspore.train import mind_ir_pb2

    model = mind_ir_pb2.ModelProto()
    model.ParseFromString(path.read_bytes())
    return [tuple(inp.tensor[0].dims) for inp in model.graph.input]


class BoundGraph:
    """A loaded graph called with its inputs by name (or in the manifest's order), checked against
    the shapes and dtypes the manifest declares before they reach the graph; returns a tuple."""

    def __init__(self, entry: GraphEntry, fn):
        self.entry = entry
        self.fn = fn
        self.names = tuple(t.name for t in entry.inputs)

    def __call__(self, *args, **named):
        if named:
            if args:
                raise TypeError(f"graph {self.entry.name}: pass its inputs either by position or by name")
            missing = [n for n in self.names if n not in named]
            extra = sorted(set(named) - set(self.names))
            if missing or extra:
                raise TypeError(f"graph {self.entry.name} takes {list(self.names)}; missing {missing}, "
                                f"unexpected {extra}")
            args = tuple(named[n] for n in self.names)
        if len(args) != len(self.names):
            raise TypeError(f"graph {self.entry.name} takes {len(self.names)} inputs {list(self.names)}, "
                            f"got {len(args)}")
        arrays = []
        for spec, value in zip(self.entry.inputs, args):
            array = np.asarray(value, dtype=spec.dtype)
            if array.shape != tuple(spec.shape):
                raise ShapeMismatch(f"graph {self.entry.name}: input {spec.name} has shape {array.shape}, the "
                                    f"export declares {tuple(spec.shape)}")
            arrays.append(np.ascontiguousarray(array))
        outputs = self.fn(*arrays)
        # the declared output dtypes (float32 where the pipeline computes in numpy), whatever the graph's own
        return tuple(np.asarray(o, dtype=spec.dtype) for o, spec in zip(outputs, self.entry.outputs)) + \
            tuple(outputs[len(self.entry.outputs):])
