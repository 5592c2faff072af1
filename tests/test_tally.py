"""Counts that add up, and outcomes that survive the trip through rows."""

import dataclasses

from pyspark.sql import types as T

from mp_spark.cli import format_stream_summary, format_summary
from mp_spark.executor import SENT_SCHEMA
from mp_spark.incremental import StreamSummary
from mp_spark.results import add_up, summarize
from mp_spark.tally import EXHAUSTED, OUTCOME_SCHEMA, TALLY_FIELDS, PartitionOutcome, Tally


def test_tallies_add_field_by_field() -> None:
    total = Tally(rows=3, imported=2, rejected=1, requests=4, unsent=6) + Tally(rows=5, imported=5, invalid=2,
                                                                               retries=1)
    assert dataclasses.astuple(total) == (8, 7, 1, 2, 0, 0, 4, 1, 0, 0, 6)


def test_an_outcome_round_trips_through_its_row_and_the_schemas_follow_the_fields() -> None:
    outcome = PartitionOutcome(7, Tally(rows=10, imported=9, rejected=1), EXHAUSTED, "gave up", 1.5)
    assert PartitionOutcome.from_row(outcome.as_row()) == outcome
    assert outcome.size == 10
    assert OUTCOME_SCHEMA.names == list(outcome.as_row())
    assert set(TALLY_FIELDS) < set(SENT_SCHEMA.names)
    assert all(SENT_SCHEMA[name].dataType == T.LongType() for name in TALLY_FIELDS)


def test_the_summary_counts_records_of_sent_partitions_and_requests_of_every_partition() -> None:
    outcomes = [PartitionOutcome(0, Tally(rows=90, imported=88, rejected=2, invalid=10, batches=1, requests=1,
                                          gzip_bytes=500)),
                PartitionOutcome(1, Tally(rows=40, imported=40, unsent=60, batches=1, requests=4, retries=3,
                                          gzip_bytes=300), EXHAUSTED, "gave up")]
    summary = summarize(run_id="r", dry_run=False, rows_read=200, partitions=2, outcomes=outcomes, resumed=0,
                        imported_before=0, seconds=2.0, results_path="/r")
    # the stopped partition is sent again whole by a resume, but its requests were made
    assert (summary.imported, summary.rejected, summary.invalid, summary.unsent) == (88, 2, 10, 100)
    assert (summary.batches, summary.requests, summary.retries, summary.gzip_bytes) == (2, 5, 3, 800)
    assert summary.balanced and not summary.complete
    assert summary.events_per_second == 44.0


def test_the_printed_summary_counts_one_of_a_thing_in_the_singular() -> None:
    one = summarize(run_id="r", dry_run=False, rows_read=5, partitions=1,
                    outcomes=[PartitionOutcome(0, Tally(rows=5, imported=5, batches=1, requests=2, retries=1))],
                    resumed=0, imported_before=0, seconds=1.0, results_path="/r")
    assert "  1 partition, 1 batch, 2 requests, 1 retry\n" in format_summary(one)
    two = dataclasses.replace(one, partitions=2, batches=0, requests=1, retries=2)
    assert "  2 partitions, 0 batches, 1 request, 2 retries\n" in format_summary(two)


def test_a_stopped_incremental_run_points_to_the_next_run_and_its_batches_rejections() -> None:
    outcomes = [PartitionOutcome(0, Tally(rows=4, imported=3, rejected=1)), PartitionOutcome(1, Tally(), EXHAUSTED)]
    stopped = summarize(run_id="r", dry_run=False, rows_read=10, partitions=2, outcomes=outcomes,
                        resumed=0, imported_before=0, seconds=1.0, results_path="/r")
    backfill, stream = format_summary(stopped), format_summary(stopped, incremental=True)
    assert "not sent yet: finish with --resume" in backfill and "not imported: /r/rejected/" in backfill
    assert "--resume" not in stream and "not sent yet: the next run sends them" in stream
    assert "not imported: /r/batches/*/*/rejected/" in stream  # where an incremental run keeps them
    before_any = StreamSummary(add_up("r", [], seconds=0.1, results_path="/r"), [], "/r/checkpoints/events-1")
    assert format_stream_summary(before_any) == "mp-spark run r: stopped before any micro-batch " \
                                                "(checkpoint /r/checkpoints/events-1)"


def test_a_profile_runs_summary_speaks_of_updates_sent_as_plain_json() -> None:
    run = summarize(run_id="r", dry_run=False, rows_read=5, partitions=1,
                    outcomes=[PartitionOutcome(0, Tally(rows=5, imported=5, batches=1, requests=1, raw_bytes=2_000_000,
                                                        gzip_bytes=2_100_000))],
                    resumed=0, imported_before=0, seconds=1.0, results_path="/r")
    assert "  2.0 MB of JSON, 1.0 s, 5 updates/s\n" in format_summary(run, noun="updates")
    assert "  2.0 MB of JSON, 2.1 MB gzip, 1.0 s, 5 events/s\n" in format_summary(run)
