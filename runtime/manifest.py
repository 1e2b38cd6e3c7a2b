"""Reading and checking an export's manifest: format version, checksums, static shapes."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class ExportInvalid(RuntimeError):
    """The export folder is missing, tampered with, or does not fit this runtime."""


class ShapeMismatch(ValueError):
    """A request that does not fit the shapes fixed at export time."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Export:
    root: Path
    manifest: dict

    @property
    def family(self) -> str:
        return self.manifest["family"]

    @property
    def shapes(self) -> dict:
        return self.manifest["shapes"]

    def graph_path(self, name: str) -> Path:
        graphs = self.manifest["graphs"]
        if name not in graphs:
            raise ExportInvalid(f"{self.root}: the export has no graph {name!r}; it has {sorted(graphs)}")
        return self.root / graphs[name]["file"]

    def describe_shapes(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.shapes.items())


def read_manifest(root) -> dict:
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise ExportInvalid(f"{root} is not an export: {MANIFEST} is missing (run export-model first)")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as err:
        raise ExportInvalid(f"{path} is not valid JSON: {err}") from err
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ExportInvalid(f"{path}: format_version {version!r}, this runtime reads {FORMAT_VERSION}; re-export")
    for key in ("family", "shapes", "graphs", "files"):
        if key not in manifest:
            raise ExportInvalid(f"{path}: manifest has no {key!r} entry")
    return manifest


def verify_export(root, check_sums: bool = True) -> Export:
    """The export at ``root``, after checking that every listed file exists with its sha256."""
    root = Path(root).resolve()
    manifest = read_manifest(root)
    for rel, expected in manifest["files"].items():
        path = root / rel
        if not path.is_file():
            raise ExportInvalid(f"{root}: file {rel} listed in the manifest is missing")
        if check_sums:
            actual = _sha256(path)
            if actual != expected:
                raise ExportInvalid(
                    f"{root}: checksum mismatch for {rel} (manifest {expected[:12]}..., file {actual[:12]}...); "
                    "the artifact was modified or corrupted - re-export it"
                )
    for name, graph in manifest["graphs"].items():
        if graph["file"] not in manifest["files"]:
            raise ExportInvalid(f"{root}: graph {name} file {graph['file']} has no checksum in the manifest")
    return Export(root, manifest)
