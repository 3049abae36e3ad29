"""``volseg prepare|gan|pretrain|finetune -c CFG``: one stage, under the manifest rule.

The same rule as ``volseg run`` (:mod:`volseg.pipeline.run`): a stage whose manifest is
``done`` with the same settings and inputs is skipped; otherwise it runs (resuming from its
checkpoints) and the main process records its manifest. Works under torchrun (every rank
reads the same manifests; rank 0 writes).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from volseg.config import Config
from volseg.errors import InputError
from volseg.pipeline import manifest as mf
from volseg.pipeline.plan import StageSpec, _enabled, _spec, _stage_inputs, _upstream_fingerprint

log = logging.getLogger(__name__)


def _command_inputs(cfg: Config, spec: StageSpec) -> dict[str, Any]:
    """A stage command's input fingerprints; an upstream stage not run is ``missing``
    (the stage itself decides whether it can go without, as finetune does without gan)."""
    if not spec.reads:
        return _stage_inputs(cfg, spec)
    inputs: dict[str, Any] = {}
    for up in spec.reads:
        try:
            inputs[up] = _upstream_fingerprint(cfg, up, spec.name)
        except InputError:
            inputs[up] = {"stage": up, "status": "missing"}
    return inputs


def run_stage_command(cfg: Config, name: str, resume: bool = True) -> Any:
    """``volseg <stage> -c CFG`` (also under torchrun): the stage's manifest is the one
    up-to-date rule, as in ``volseg run``. A stage done with these settings and inputs is
    skipped (unless ``resume`` is False); otherwise it runs (resuming from its checkpoints)
    and the main process records its manifest."""
    spec = _spec(name)
    run_dir = Path(cfg.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"{run_dir}: exists and is not a folder (run_dir)")
    inputs = _command_inputs(cfg, spec)
    inputs_hash = mf.stable_hash(inputs)
    config_hash, per_section = mf.config_fingerprint(cfg, spec.sections)
    prev = mf.read_manifest(run_dir, name)
    if resume and prev is not None and prev.status == mf.STATUS_DONE:
        if prev.matches(config_hash, inputs_hash):
            log.info("%s: up to date (finished %s), skipped", name, prev.finished)
            return Path(prev.output) if prev.output else run_dir / name
    main = int(os.environ.get("RANK", "0")) == 0
    record = mf.Manifest(
        stage=name,
        status=mf.STATUS_RUNNING,
        config_hash=config_hash,
        config_sections=per_section,
        inputs=inputs,
        inputs_hash=inputs_hash,
        started=mf.now_iso(),
    )
    fn = spec.resolve()
    start = time.monotonic()
    try:
        output = fn(cfg) if name == "prepare" else fn(cfg, resume=resume)
    except BaseException as exc:
        if main and (run_dir / name).is_dir():
            record.status, record.error = mf.STATUS_FAILED, f"{type(exc).__name__}: {exc}"[:2000]
            record.finished = mf.now_iso()
            mf.write_manifest(run_dir, record)
        raise
    if main:
        done = mf.STATUS_DISABLED if spec.optional and not _enabled(cfg, spec) else mf.STATUS_DONE
        record.status, record.finished = done, mf.now_iso()
        record.duration_s = round(time.monotonic() - start, 3)
        record.output = str(output if output is not None else run_dir / name)
        record.run_id = mf.new_run_id()
        mf.write_manifest(run_dir, record)
    return output
