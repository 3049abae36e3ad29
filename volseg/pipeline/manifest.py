"""Per-stage run records (``<run_dir>/<stage>/manifest.json``) and the fingerprints in them.

A manifest says what a stage last did in a run directory: its status, a hash of the config
sections its result depends on, fingerprints of its inputs (upstream stages' manifests, or
the dataset's file listing), software versions, timing and its output folder. The
orchestrator (:mod:`volseg.pipeline.run`) compares these with the current config to decide
whether a stage is up to date. Manifests are written atomically, so a crash leaves either
the previous record or the new one, never half of either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import platform
import uuid
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from volseg.config import Config
from volseg.io import write_json_atomic
from volseg.utils import listing_fingerprint  # noqa: F401  (part of the manifest's API)

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1

STATUS_RUNNING = "running"
STATUS_DONE = "done"
STATUS_FAILED = "failed"
STATUS_DISABLED = "skipped-disabled"
STATUSES = (STATUS_RUNNING, STATUS_DONE, STATUS_FAILED, STATUS_DISABLED)


def stable_hash(obj: Any) -> str:
    """Short SHA-256 of a JSON-serialisable object, independent of key order."""
    payload = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def now_iso() -> str:
    """Current time in UTC, ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def software_versions() -> dict[str, str | None]:
    """Versions of volseg, torch, MONAI and Python, read without importing torch/MONAI."""
    from volseg import __version__

    def dist_version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "volseg": __version__,
        "torch": dist_version("torch"),
        "monai": dist_version("monai"),
        "python": platform.python_version(),
    }


def config_fingerprint(cfg: Config, sections: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """Hash of the named config sections (top-level values such as ``seed`` allowed).

    Returns ``(combined_hash, {section: hash})``; the per-section hashes are kept in the
    manifest so a user can see which section changed.
    """
    per_section: dict[str, str] = {}
    for name in sections:
        value = getattr(cfg, name)
        if hasattr(value, "model_dump"):
            per_section[name] = cfg.section_hash(name)
        else:
            per_section[name] = stable_hash({name: value})
    return stable_hash(per_section), per_section


@dataclasses.dataclass
class Manifest:
    """What one stage last did in a run directory."""

    stage: str
    status: str
    config_hash: str
    config_sections: dict[str, str]
    inputs: dict[str, Any]
    inputs_hash: str
    versions: dict[str, str | None] = dataclasses.field(default_factory=software_versions)
    started: str | None = None
    finished: str | None = None
    duration_s: float | None = None
    output: str | None = None
    run_id: str | None = None
    """New for every completed run of the stage; downstream fingerprints include it."""
    error: str | None = None

    def matches(self, config_hash: str, inputs_hash: str) -> bool:
        """Whether this record was made with the same settings and inputs."""
        return self.config_hash == config_hash and self.inputs_hash == inputs_hash

    def fingerprint(self, outputs: str | None = None) -> dict[str, Any]:
        """What a downstream stage records about this one as its input.

        A completed stage is identified by its ``run_id`` (so any re-run propagates) and
        ``outputs``, the current listing hash of its folder (so files replaced since, e.g.
        by re-running the stage's own command, propagate too); a disabled stage only by
        being disabled.
        """
        if self.status == STATUS_DISABLED:
            return {"stage": self.stage, "status": self.status}
        return {
            "stage": self.stage,
            "status": self.status,
            "run_id": self.run_id,
            "outputs": outputs,
        }

    def to_json(self) -> dict[str, Any]:
        return {"manifest_version": MANIFEST_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Manifest:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in fields})


def manifest_path(run_dir: str | Path, stage: str) -> Path:
    """``<run_dir>/<stage>/manifest.json``."""
    return Path(run_dir) / stage / MANIFEST_NAME


def read_manifest(run_dir: str | Path, stage: str) -> Manifest | None:
    """The stage's manifest, or None when absent or unreadable (then the stage re-runs)."""
    path = manifest_path(run_dir, stage)
    if not path.is_file():
        return None
    try:
        record = Manifest.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        log.warning("%s: unreadable manifest (%s); the stage will re-run", path, exc)
        return None
    if record.status not in STATUSES:
        log.warning("%s: unknown status %r; the stage will re-run", path, record.status)
        return None
    return record


def write_manifest(run_dir: str | Path, record: Manifest) -> Path:
    """Write the stage's manifest atomically."""
    return write_json_atomic(manifest_path(run_dir, record.stage), record.to_json())


def new_run_id() -> str:
    return uuid.uuid4().hex
