import gzip

import pytest

from mp_spark.batching import Batch, batches_from_chunks, chunk_of_lines, gzip_body, isal_zlib


def batches(chunks: list[list[str]], max_events: int, max_bytes: int) -> list[Batch]:
    return list(batches_from_chunks([chunk_of_lines(c) for c in chunks], max_events=max_events, max_bytes=max_bytes))


def test_batches_close_on_event_count() -> None:
    got = batches([[f'{{"n":{i}}}' for i in range(5)]], max_events=2, max_bytes=10_000)
    assert [b.count for b in got] == [2, 2, 1]
    assert got[0].body == b'{"n":0}\n{"n":1}\n'
    assert got[0].lines() == [b'{"n":0}', b'{"n":1}']


def test_batches_close_before_the_byte_cap() -> None:
    line = "x" * 99  # 100 bytes with its newline
    got = batches([[line] * 7], max_events=2000, max_bytes=300)
    assert [b.count for b in got] == [3, 3, 1]
    assert all(len(b.body) <= 300 for b in got)


def test_batches_count_utf8_bytes_not_characters() -> None:
    assert [b.count for b in batches([["é" * 50] * 3], max_events=2000, max_bytes=220)] == [2, 1]  # 101 bytes each


def test_an_oversized_line_travels_alone() -> None:
    got = batches([["a", "b" * 500, "c"]], max_events=2000, max_bytes=100)
    assert [b.lines() for b in got] == [[b"a"], [b"b" * 500], [b"c"]]


def test_batches_span_chunks_without_losing_or_reordering_lines() -> None:
    chunks = [[f"{c}-{i}" for i in range(n)] for c, n in enumerate([5, 0, 1, 7, 3])]
    got = batches(chunks, max_events=4, max_bytes=10_000)
    assert [b.count for b in got] == [4, 4, 4, 4]
    assert [line for b in got for line in b.lines()] == [line.encode() for c in chunks for line in c]


def test_batches_of_nothing_are_empty() -> None:
    assert batches([[], []], max_events=10, max_bytes=100) == []


def test_batch_of_lines_round_trips() -> None:
    batch = Batch.of_lines([b"a", b"bc"])
    assert (batch.body, batch.count, batch.lines()) == (b"a\nbc\n", 2, [b"a", b"bc"])


@pytest.mark.parametrize("use_isal", [True, False])
@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_gzip_body_round_trips_and_is_deterministic(use_isal: bool, level: int) -> None:
    body = Batch.of_lines([b'{"a":1}', b'{"b":2}'] * 50).body
    compressed = gzip_body(body, level, use_isal=use_isal)
    assert gzip.decompress(compressed) == body
    assert compressed == gzip_body(body, level, use_isal=use_isal)
    if level:
        assert len(compressed) < len(body) / 4


def test_isal_is_installed_with_the_local_extra() -> None:
    assert isal_zlib is not None  # otherwise the fast path above was never tested
