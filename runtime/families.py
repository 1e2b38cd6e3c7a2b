"""The one registry of model families. Everything that needs to know the families (export-model,
load_pipeline, generate-video, serve-model, bench-model and the tests) iterates this registry.

A family is declared once, as ``FAMILY = FamilySpec(...)`` at the top of its runtime module
(runtime/<family>.py, next to its pipeline classes), and registered by one line in ``REGISTERED``
below. Its other files are one per layer: models/<family>*.py (networks, discovered by the loader)
and export/<family>.py (``plan()``: which graphs, with which static shapes).
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from typing import Callable, Mapping

logger = logging.getLogger(__name__)

# runtime/<module>.py files that declare a FAMILY; adding a family adds one name here
REGISTERED = ("svd", "t2v", "cogvideox", "i2vgen", "mochi", "ltx", "hunyuan_video", "animatediff", "text2video_zero")


@dataclass(frozen=True)
class FamilySpec:
    name: str  # the manifest's "family"
    pipelines: Mapping[str, type]  # diffusers pipeline class name -> our pipeline class (same name)
    export: str  # export/<export>.py holds plan()
    components: tuple  # snapshot components the export reads
    # short names for load_pipeline(pipeline=...) / generate-video, e.g. "video2video"
    aliases: Mapping[str, str] = field(default_factory=dict)

    @property
    def plan(self) -> Callable:
        """export/<family>.py ``plan(snapshot, weights, frames, height, width, ...)``."""
        return importlib.import_module(f"video_aot.export.{self.export}").plan

    def pipeline_names(self) -> list:
        return sorted(set(self.pipelines) | set(self.aliases))

    def pipeline_class(self, name: str) -> type:
        """The pipeline class for a diffusers class name or one of the family's short names."""
        resolved = self.aliases.get(name, name)
        if resolved not in self.pipelines:
            raise ValueError(f"pipeline {name!r} is not one of the {self.name} family's pipelines; choose one of "
                             f"{self.pipeline_names()}")
        return self.pipelines[resolved]


_CACHE: dict = {}
_BROKEN: dict = {}  # module -> why it failed to import: the other families still work


def families() -> dict:
    """name -> FamilySpec for every registered family (imported on first use)."""
    if not _CACHE:
        for module in REGISTERED:
            try:
                spec = importlib.import_module(f"{__package__}.{module}").FAMILY
            except Exception as err:  # noqa: BLE001 - named whenever a lookup misses
                _BROKEN[module] = f"{type(err).__name__}: {err}"
                logger.warning("runtime/%s.py failed to import: %s", module, _BROKEN[module])
                continue
            if spec.name in _CACHE:
                raise RuntimeError(f"family {spec.name!r} is declared twice")
            _CACHE[spec.name] = spec
    return _CACHE


def _broken() -> str:
    return "".join(f"; runtime/{m}.py failed to import ({e})" for m, e in _BROKEN.items())


def family(name: str) -> FamilySpec:
    registry = families()
    if name not in registry:
        raise ValueError(f"family {name!r} has no runtime pipeline; supported families: {sorted(registry)}"
                         + _broken())
    return registry[name]


def supported_pipelines() -> list:
    return sorted(p for spec in families().values() for p in spec.pipelines)


def family_for_pipeline(pipeline: str) -> FamilySpec:
    """The family that serves a diffusers pipeline class (a snapshot's model_index.json ``_class_name``)."""
    for spec in families().values():
        if pipeline in spec.pipelines:
            return spec
    raise ValueError(f"pipeline {pipeline!r} is not supported; supported: {supported_pipelines()}" + _broken())
