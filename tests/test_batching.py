import gzip

from mp_spark.batching import gzip_body, iter_batches, ndjson_body


def test_iter_batches_closes_on_event_count() -> None:
    batches = list(iter_batches((f'{{"n":{i}}}' for i in range(5)), max_events=2, max_bytes=10_000))
    assert [len(b) for b in batches] == [2, 2, 1]
    assert batches[0] == [b'{"n":0}', b'{"n":1}']


def test_iter_batches_closes_before_the_byte_cap() -> None:
    line = "x" * 99  # 100 bytes with its newline
    batches = list(iter_batches([line] * 7, max_events=2000, max_bytes=300))
    assert [len(b) for b in batches] == [3, 3, 1]
    assert all(len(ndjson_body(b)) <= 300 for b in batches)


def test_iter_batches_counts_utf8_bytes_not_characters() -> None:
    batches = list(iter_batches(["é" * 50] * 3, max_events=2000, max_bytes=220))  # 101 bytes each
    assert [len(b) for b in batches] == [2, 1]


def test_iter_batches_sends_an_oversized_line_alone() -> None:
    batches = list(iter_batches(["a", "b" * 500, "c"], max_events=2000, max_bytes=100))
    assert [len(b) for b in batches] == [1, 1, 1]


def test_iter_batches_of_nothing_is_empty() -> None:
    assert list(iter_batches([], max_events=10, max_bytes=100)) == []


def test_gzip_body_round_trips_and_is_deterministic() -> None:
    body = ndjson_body([b'{"a":1}', b'{"b":2}'])
    assert gzip.decompress(gzip_body(body, 6)) == b'{"a":1}\n{"b":2}'
    assert gzip_body(body, 6) == gzip_body(body, 6)
