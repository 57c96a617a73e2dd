"""Where training metrics go: ``metrics.jsonl`` always, TensorBoard too when it is installed (rank 0 only)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

__all__ = ["MetricsLog"]

log = logging.getLogger(__name__)


class MetricsLog:
    """Appends one JSON line per record to ``run_dir/metrics.jsonl``; mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Path):
        self._file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self._tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:  # the tensorboard package is optional
            log.debug("tensorboard not installed: metrics.jsonl only")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tensorboard is not None:
            step = record.get("step", 0)
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._tensorboard.add_scalar(f"train/{key}", value, step)
            for key, value in (record.get("eval") or {}).items():
                self._tensorboard.add_scalar(f"eval/{key}", value, step)

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
