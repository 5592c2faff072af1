"""Where a run's time went, by Spark stage: `python benchmarks/stages.py EVENT_LOG` (not part of the tests).

EVENT_LOG is one uncompressed event log file. To write one for a whole command, point Spark at a
configuration directory whose spark-defaults.conf has

    spark.eventLog.enabled true
    spark.eventLog.dir file:///tmp/mp-spark-events
    spark.eventLog.compress false
    spark.eventLog.rolling.enabled false

and run, for example, `SPARK_CONF_DIR=that/dir python jobs/backfill.py --config benchmarks/out/command-m.json`.
Such a run starts without the class archive (mp_spark.class_archive), about 3 s later than others.
Prints each stage (start and length, in seconds from the application's start) and its tasks' lengths.
"""

from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    started_ms = None
    tasks: dict[int, list[float]] = {}
    with open(path, encoding="utf-8") as log:
        for line in log:
            event = json.loads(line)
            kind = event["Event"]
            if kind == "SparkListenerApplicationStart":
                started_ms = event["Timestamp"]
            elif kind == "SparkListenerTaskEnd":
                info = event["Task Info"]
                tasks.setdefault(event["Stage ID"], []).append((info["Finish Time"] - info["Launch Time"]) / 1000)
            elif kind == "SparkListenerStageCompleted":
                stage = event["Stage Info"]
                start_s = (stage["Submission Time"] - started_ms) / 1000
                length_s = (stage["Completion Time"] - stage["Submission Time"]) / 1000
                lengths = ", ".join(f"{s:.2f}" for s in tasks.get(stage["Stage ID"], []))
                print(f"stage {stage['Stage ID']:>3}  at {start_s:6.2f} s  for {length_s:5.2f} s  "
                      f"{stage['Stage Name'][:45]:<45}  tasks: {lengths}")
            elif kind == "SparkListenerApplicationEnd":
                print(f"application end at {(event['Timestamp'] - started_ms) / 1000:.2f} s")


if __name__ == "__main__":
    main(sys.argv[1])
