"""A look at the executors' Python before any work goes there: does it have mp_spark and what the
sending tasks import?

`look_around` is pickled by value (see `mp_spark.session`), so it runs even where mp_spark is not
importable, and says so as data rather than as a failed task.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass

# What the sending tasks import besides mp_spark and pyspark: module name -> the package that has it
NEEDED = {"pyarrow": "pyarrow", "pandas": "pandas", "requests": "requests", "yaml": "pyyaml"}
FOUND_SCHEMA = "python string, mp_spark string, missing array<string>"


@dataclass(frozen=True)
class Found:
    python: str
    mp_spark: str | None  # its version, or None when the executors cannot import it
    missing: list[str]


def look_around(batches: Iterator) -> Iterator:
    import pyarrow as pa  # mapInArrow itself needs it, so it is there

    for _ in batches:
        pass
    missing = []
    for name in NEEDED:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(NEEDED[name])
    try:
        version = importlib.import_module("mp_spark").__version__
    except ImportError:
        version = None
    python = ".".join(map(str, sys.version_info[:3]))
    schema = pa.schema([("python", pa.string()), ("mp_spark", pa.string()), ("missing", pa.list_(pa.string()))])
    yield pa.RecordBatch.from_pylist([{"python": python, "mp_spark": version, "missing": missing}], schema=schema)
