"""A run's record in its results path, so that an interrupted backfill resumes where it stopped.

- `run.json`: the run id, the config it ran with (never a secret: those are not in the config), the
  moment it took as "now" (validation and `recent_first` depend on it) and the rows of each phase.
- `done/`: the partitions that finished, one small file per progress tick, written by the driver as
  it learns of them. A resumed run sends only the other partitions.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from pyspark.sql import SparkSession

from mp_spark.config import ConfigError
from mp_spark.partition import PartitionResult
from mp_spark.storage import delete, list_names, read_text, write_text


@dataclass(frozen=True)
class Manifest:
    run_id: str
    config: dict  # the parsed config as plain data (dataclasses.asdict), which parse_config reads back
    now_ms: int
    phase_rows: list[int]  # rows to send in each phase (one, or the recent window and the rest)
    dry_run: bool = False  # nothing was sent: there is nothing to resume


class Ledger:
    def __init__(self, spark: SparkSession, results_path: str) -> None:
        self._spark = spark
        self.path = results_path.rstrip("/")

    def write_manifest(self, manifest: Manifest) -> None:
        """Start a new run: its manifest, and no finished partitions (a results path used by an
        earlier run keeps none of that run's)."""
        delete(self._spark, f"{self.path}/done")
        write_text(self._spark, f"{self.path}/run.json", json.dumps(dataclasses.asdict(manifest), indent=2) + "\n")

    def read_manifest(self) -> Manifest:
        try:
            text = read_text(self._spark, f"{self.path}/run.json")
        except OSError:
            raise ConfigError(f"--resume: no run to resume at {self.path} (it has no run.json)") from None
        return Manifest(**json.loads(text))

    def record(self, partitions: list[PartitionResult]) -> None:
        """Add finished partitions in a new file named after the first: a partition finishes only once."""
        if not partitions:
            return
        first = min(p.index for p in partitions)
        lines = "".join(json.dumps(dataclasses.asdict(p)) + "\n" for p in partitions)
        write_text(self._spark, f"{self.path}/done/{first:06d}.jsonl", lines)

    def finished(self) -> dict[int, PartitionResult]:
        """The partitions recorded as finished, by index."""
        done: dict[int, PartitionResult] = {}
        for name in list_names(self._spark, f"{self.path}/done"):
            for line in read_text(self._spark, f"{self.path}/done/{name}").splitlines():
                result = PartitionResult.from_dict(json.loads(line))
                done[result.index] = result
        return done
