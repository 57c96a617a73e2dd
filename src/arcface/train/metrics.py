"""Where training metrics go: ``metrics.jsonl`` always, TensorBoard too when it is installed (rank 0 only).

``metrics.jsonl`` is strict JSON, one object a line: a non-finite number (a NaN loss, an infinite
learning rate) is written as ``null``. A resumed run first drops the lines of steps after the
checkpoint it resumes from (they are logged again as the run repeats those steps), so no step
appears twice.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

__all__ = ["MetricsLog", "strict_json"]

log = logging.getLogger(__name__)


def strict_json(value):
    """``value`` with every non-finite float replaced by None (``json.dumps(..., allow_nan=False)`` accepts it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


def _truncate_after(path: Path, step: int) -> None:
    """Keep the lines of ``path`` up to ``step`` (and drop a line cut short by a kill), atomically."""
    if not path.is_file():
        return
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > step:
            dropped += 1
            continue
        kept.append(line)
    if not dropped:
        return
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(partial, path)
    log.info("%s: dropped %d line(s) after step %d, the step this run resumes from", path, dropped, step)


class MetricsLog:
    """Appends one JSON line per record to ``run_dir/metrics.jsonl``; mirrors scalars to TensorBoard.

    Args:
        resume_step: for a resumed run, the checkpoint's step: later lines are dropped first.
    """

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        path = Path(run_dir) / "metrics.jsonl"
        if resume_step is not None:
            _truncate_after(path, resume_step)
        self._file = open(path, "a", encoding="utf-8")
        self._tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        except ImportError:  # the tensorboard package is optional
            log.debug("tensorboard not installed: metrics.jsonl only")

    def write(self, record: dict) -> None:
        record = strict_json(record)
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self._tensorboard is not None:
            step = record.get("step", 0)
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._tensorboard.add_scalar(f"train/{key}", value, step)
            for key, value in (record.get("eval") or {}).items():
                if value is not None:
                    self._tensorboard.add_scalar(f"eval/{key}", value, step)

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
