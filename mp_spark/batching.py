"""Pure batching: finished JSON lines in, /import-sized batches out."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator

GZIP_WBITS = 31  # zlib's gzip container (16 + 15-bit window)


def iter_batches(lines: Iterable[str], *, max_events: int, max_bytes: int) -> Iterator[list[bytes]]:
    """Group JSON lines into batches of at most `max_events` lines and `max_bytes` of ndjson body.

    A single line larger than `max_bytes` travels alone; Mixpanel judges it (events over 1 MB are
    rejected per record, not per request).
    """
    batch: list[bytes] = []
    size = 0
    for line in lines:
        encoded = line.encode("utf-8")
        added = len(encoded) + 1  # the newline that joins ndjson lines
        if batch and (len(batch) == max_events or size + added > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(encoded)
        size += added
    if batch:
        yield batch


def ndjson_body(batch: list[bytes]) -> bytes:
    return b"\n".join(batch)


def gzip_body(body: bytes, level: int) -> bytes:
    """gzip without a timestamp, so the same batch always compresses to the same bytes."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, GZIP_WBITS)
    return compressor.compress(body) + compressor.flush()
