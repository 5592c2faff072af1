"""The function Structured Streaming calls for each micro-batch, built to run where mp_spark cannot be
imported yet.

On Spark Connect, foreachBatch runs it in a Python process of the server's, which, unlike the
executors' workers, does not see the package the session shipped (`session.ship_package`). So this
module is pickled by value (see `mp_spark.incremental`), and the function's closure holds plain data
only: the config as JSON, the credentials as strings and, on Connect, mp_spark itself as zip bytes,
which it puts on `sys.path` before it imports anything of mp_spark. On classic Spark it runs in the
driver's own Python, and needs none of that.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile


def for_each_batch(package: bytes | None, config_json: str, credentials: tuple[str, str, str] | None,
                   results_path: str, run_id: str, checkpoint: str):
    """The foreachBatch function: `mp_spark.incremental.MicroBatches` of the given run."""
    stream = {}  # the stream's id, read from the checkpoint once (Spark writes it as the query starts)

    def send_batch(batch, batch_id: int) -> None:
        if package is not None:
            make_importable(package)
        from mp_spark.config import Credentials, parse_config
        from mp_spark.incremental import MicroBatches, stream_id

        if not stream:
            stream["id"] = stream_id(batch.sparkSession, checkpoint)
        sender = MicroBatches(parse_config(config_json), Credentials(*credentials) if credentials else None,
                              results_path, run_id, stream["id"])
        sender(batch, batch_id)

    return send_batch


def make_importable(package: bytes) -> None:
    """Put the zipped package first on sys.path (written once per machine and version)."""
    path = os.path.join(tempfile.gettempdir(), f"mp_spark-{hashlib.sha256(package).hexdigest()[:16]}.zip")
    if not os.path.exists(path):
        partial = f"{path}.{os.getpid()}"
        with open(partial, "wb") as out:
            out.write(package)
        os.replace(partial, path)  # whole or not at all, whoever writes it at the same time
    if path not in sys.path:
        sys.path.insert(0, path)
