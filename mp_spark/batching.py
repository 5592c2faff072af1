"""Pure batching: newline-terminated JSON lines in contiguous buffers in, /import-sized batches out.

Spark hands each task its lines as Arrow string arrays: one data buffer plus offsets. A batch is a
slice of that buffer, found by binary search on the offsets, so no Python work is done per line.
"""

from __future__ import annotations

import zlib
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

try:  # ISA-L: about 10x faster than zlib at level 6 on event JSON, with similar output (docs/performance.md)
    from isal import isal_zlib
except ImportError:  # the `fast` extra is optional: stdlib zlib works everywhere
    isal_zlib = None

GZIP_WBITS = 31  # the gzip container (16 + 15-bit window)


@dataclass(frozen=True)
class Batch:
    """ndjson body (every line ends with a newline) and how many events it holds."""

    body: bytes
    count: int

    def lines(self) -> list[bytes]:
        return self.body.rstrip(b"\n").split(b"\n")

    @classmethod
    def of_lines(cls, lines: Sequence[bytes]) -> Batch:
        return cls(b"".join(line + b"\n" for line in lines), len(lines))


# A chunk: (data, offsets), where line i is data[offsets[i]:offsets[i + 1]], newline included.
Chunk = tuple[bytes | memoryview, Sequence[int]]


def batches_from_chunks(chunks: Iterable[Chunk], *, max_events: int, max_bytes: int) -> Iterator[Batch]:
    """Cut chunks of lines into batches of at most `max_events` lines and `max_bytes` of body.

    A batch may span chunks. A single line larger than `max_bytes` travels alone; Mixpanel judges
    it (events over 1 MB are rejected per record, not per request).
    """
    parts: list[bytes] = []
    count = size = 0
    for data, offsets in chunks:
        start, end_of_chunk = 0, len(offsets) - 1
        while start < end_of_chunk:
            last = min(start + max_events - count, end_of_chunk)
            # the furthest line end within the byte room left: a binary search, not a loop over lines
            end = bisect_right(offsets, offsets[start] + max_bytes - size, start + 1, last + 1) - 1
            if end <= start:
                if count:  # the next line does not fit: close the batch and retry it in a new one
                    yield Batch(b"".join(parts), count)
                    parts, count, size = [], 0, 0
                    continue
                end = start + 1  # an oversized line on its own
            parts.append(bytes(data[offsets[start]:offsets[end]]))
            count += end - start
            size += offsets[end] - offsets[start]
            start = end
            if start < end_of_chunk or count == max_events:  # full, not merely out of lines
                yield Batch(b"".join(parts), count)
                parts, count, size = [], 0, 0
    if count:
        yield Batch(b"".join(parts), count)


def chunk_of_lines(lines: Iterable[str]) -> Chunk:
    """One chunk from plain strings (for callers and tests that do not come from Arrow)."""
    encoded = [line.encode("utf-8") + b"\n" for line in lines]
    offsets = [0]
    for line in encoded:
        offsets.append(offsets[-1] + len(line))
    return b"".join(encoded), offsets


def gzip_body(body: bytes, level: int, *, use_isal: bool = True) -> bytes:
    """gzip without a timestamp, so the same batch always compresses to the same bytes.

    `level` is zlib's 0-9; ISA-L has levels 0-3, so 1-3 map to 1, 4-6 to 2 and 7-9 to 3.
    """
    if use_isal and isal_zlib is not None:
        compressor = isal_zlib.compressobj(min(3, (level + 2) // 3), isal_zlib.DEFLATED, GZIP_WBITS)
    else:
        compressor = zlib.compressobj(level, zlib.DEFLATED, GZIP_WBITS)
    return compressor.compress(body) + compressor.flush()
