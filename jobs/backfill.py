"""Entry point for `spark-submit jobs/backfill.py --config ...` (and `python jobs/backfill.py ...`).

Deliberately thin: this file runs as __main__, so nothing here may be shipped to executors.
"""

from mp_spark.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
