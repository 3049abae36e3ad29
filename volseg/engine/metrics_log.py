"""Training logs: a JSON-lines metrics file and TensorBoard scalars, written by rank 0 only.

``<stage_dir>/metrics.jsonl`` gets one object per line: ``{"type": "train"|"val", "epoch",
"step", "time", "lr"..., <losses or metrics>}``, where ``step`` counts completed optimizer
steps. On resume, lines past the checkpoint's step are dropped so the file reads as one run.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from volseg.io import write_text_atomic

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a metrics file; a torn last line (killed mid-write) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            records.append(obj)
    return records


def truncate_metrics(path: str | Path, max_step: int) -> int:
    """Keep only records with ``step <= max_step`` (atomically); returns how many remain."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept = [r for r in read_metrics(path) if int(r.get("step", 0)) <= max_step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
    return len(kept)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


class MetricsLogger:
    """Appends metric records to ``metrics.jsonl`` and mirrors scalars to TensorBoard.

    Disabled (a no-op) when ``enabled`` is False, e.g. on ranks other than 0. TensorBoard is
    optional: if it cannot be imported the JSON file is still written.
    """

    def __init__(
        self, stage_dir: str | Path, enabled: bool = True, purge_step: int | None = None
    ) -> None:
        self.enabled = enabled
        self.path = Path(stage_dir) / METRICS_FILE
        self._file = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(stage_dir) / TB_DIR), purge_step=purge_step)
        except Exception as exc:  # tensorboard missing or broken
            log.info("TensorBoard logging off (%s)", exc)

    def log(self, record: dict[str, Any]) -> None:
        """Write one record; numeric fields other than epoch/step also go to TensorBoard."""
        if not self.enabled or self._file is None:
            return
        clean = {k: _jsonable(v) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self._tb is not None:
            prefix = str(record.get("type", "train"))
            step = int(record.get("step", 0))
            for key, value in record.items():
                if key in ("type", "epoch", "step", "time") or isinstance(value, bool):
                    continue
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
