"""Look before you send: sample events as /import would receive them, and a profile of their properties.

Events are immutable once in Mixpanel, so `--dry-run` shows what would be sent and warns about
what Mixpanel advises against. The sending tasks pass on what the preview needs (their first lines,
and fingerprints of a sample of the records), so the source is read once, as in a real run.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mp_spark import counted
from mp_spark.config import Config
from mp_spark.executor import PROFILE, SAMPLE, SAMPLES_PER_PARTITION, arrow_chunk
from mp_spark.lookup import to_lookup_rows
from mp_spark.mapping import CORE_PROPERTIES, JSON_TYPE_KEY, LEFT_OUT_KEY, left_out_messages
from mp_spark.records import source_rows
from mp_spark.sources import unhashable

MAX_EVENT_NAMES = 5000  # beyond this, names are not indexed or offered in autocomplete
HIGH_CARDINALITY = 0.5  # more distinct values than half the rows: likely an id, not a property
HOT_SHARD_EVENTS_PER_DAY = 200_000  # more for one distinct_id in a day: Mixpanel renames them $hotshard_events
PROFILE_SAMPLE_ROWS = 100_000  # about this many of the records are profiled
PROFILE_SAMPLE_VALUES = 5_000_000  # ... and fewer when they hold more values than this
SAMPLE_BUCKETS = 1_000_000  # a record is in the sample by its key's hash modulo this


@dataclass(frozen=True)
class PropertyProfile:
    name: str
    json_type: str
    null_share: float
    approx_distinct: int
    cut: int = 0  # rows whose value was cut to fit Mixpanel's limits


@dataclass(frozen=True)
class Preview:
    samples: list[dict]
    rows: int  # the rows profiled: all of them, or a sample of `of_rows`
    approx_event_names: int
    properties: list[PropertyProfile]
    busiest_user_day: int = 0  # the most events one distinct_id has in one UTC day (estimated from a sample)
    left_out: dict[str, str] = field(default_factory=dict)  # what no event will carry (path -> why)
    of_rows: int = 0  # the rows of the run
    repeated_profiles: int = 0  # profiles that several source rows update (which lands last is chance)

    @property
    def sampled(self) -> bool:
        return self.of_rows > self.rows

    def warnings(self) -> list[str]:
        found = left_out_messages(self.left_out)
        if self.repeated_profiles:
            found.append(f"{counted(self.repeated_profiles, 'profile')} updated by several source rows: their updates "
                         "land in no set order, so which value each keeps is chance (give the job one row per profile)")
        if self.approx_event_names > MAX_EVENT_NAMES:
            found.append(f"about {self.approx_event_names:,} distinct event names: Mixpanel indexes "
                         f"only {MAX_EVENT_NAMES:,}")
        for p in self.properties:
            if p.cut:
                limits = ("strings over 255 bytes are cut on a character boundary" if p.json_type == "string" else
                          "lists and objects keep 254 items, and are left out over 8 KB")
                found.append(f"property {p.name!r} is cut in {p.cut:,} of {self.rows:,} rows to fit Mixpanel's "
                             f"limits ({limits})")
            if self.rows >= 1000 and p.approx_distinct > HIGH_CARDINALITY * self.rows:
                found.append(f"property {p.name!r} has about {p.approx_distinct:,} distinct values in "
                             f"{self.rows:,} rows: an id? Mixpanel advises against high-cardinality properties")
        if self.busiest_user_day > HOT_SHARD_EVENTS_PER_DAY:
            about = "about " if self.sampled else ""
            found.append(f"one distinct_id has {about}{self.busiest_user_day:,} events in a day: Mixpanel renames "
                         f"events beyond {HOT_SHARD_EVENTS_PER_DAY:,} a day to $hotshard_events")
        return found

    def render(self, noun: str = "events") -> str:
        lines = [f"{len(self.samples)} {noun} as they would be sent:" if self.samples else "nothing would be sent"]
        lines += [f"  {json.dumps(sample, ensure_ascii=False)}" for sample in self.samples]
        if self.properties and self.rows:  # profiled for events only, when there are any
            lines.append(f"properties over a sample of {self.rows:,} of {self.of_rows:,} rows:" if self.sampled
                         else f"properties over {self.rows:,} rows:")
            lines.append(f"  {'name':<28}{'type':<9}{'null':>7}{'distinct':>12}{'cut':>10}")
            lines += [f"  {p.name[:27]:<28}{p.json_type:<9}{p.null_share:>7.0%}{p.approx_distinct:>12,}{p.cut:>10,}"
                      for p in self.properties]
        lines += [f"warning: {w}" for w in self.warnings()]
        return "\n".join(lines)


def preview_lookup_table(spark: SparkSession, config: Config) -> Preview:
    """For --dry-run of a lookup table: its first rows as Mixpanel would read them."""
    rows, header = to_lookup_rows(config.mapping)(source_rows(spark, config))
    names = next(csv.reader([header]))
    lines = [row.line for row in rows.filter(F.col("invalid").isNull()).select("line").limit(5).collect()]
    return Preview([dict(zip(names, next(csv.reader([line])), strict=True)) for line in lines], rows=0,
                   approx_event_names=0, properties=[])


class Previewer:
    """--dry-run's look at what would be sent, from the sending tasks' own rows: their first records
    as samples, and the fingerprints of a sample of at most `sample_rows` records, which profile the
    properties and the busiest user-day (a second read of the source for them cost a 1M-event dry run
    about a sixth of its time)."""

    def __init__(self, show: Callable[[Preview], None], sample_rows: int = PROFILE_SAMPLE_ROWS) -> None:
        self._show = show
        self._sample_rows = sample_rows

    def profile_column(self, records: DataFrame, config: Config, rows: int) -> Column | None:
        """What the sending tasks pass on of each of the `rows` records for the profile (None for
        profile updates, which are not profiled): null, or for an event in the sample its
        fingerprints as a line of comma-separated numbers (empty for null): event, distinct_id, UTC
        day, each property's value, then 1 for each property that was cut, else 0. Values are 32-bit
        hashes (lists and objects by their JSON): among the sample's 100,000 values, two hashing alike
        are expected about once, too rare to move a count. The sample is taken by the record's key,
        so a retried task samples the same records."""
        if config.profiles:  # profile updates: samples only
            return None
        fields = profiled_fields(records.schema["properties"])
        # Each property is two numbers per sampled record on the driver: wide events are sampled thinner.
        wanted = min(self._sample_rows, max(1_000, PROFILE_SAMPLE_VALUES // (len(fields) + 3)))
        share = round(min(1.0, wanted / max(rows, 1)) * SAMPLE_BUCKETS)
        in_sample = F.pmod(F.xxhash64("key"), F.lit(SAMPLE_BUCKETS)) < share
        properties = [F.col("properties").getField(f.name) for f in fields]
        numbers = [
            fingerprint(F.col("event"), T.StringType()), fingerprint(F.col("distinct_id"), T.StringType()),
            F.floor(F.col("time") / 86_400_000),  # time is epoch ms: a UTC day, whatever the session's zone
            *[fingerprint(value, f.dataType) for value, f in zip(properties, fields, strict=True)],
            *[F.array_contains("cut", f.name).cast("long") for f in fields],
        ]
        # Each line ends in a newline, so that the rows read back are a CSV document as they lie in memory.
        return F.when(in_sample, F.concat(F.concat_ws(",", *[F.coalesce(n.cast("string"), F.lit("")) for n in numbers]),
                                          F.lit("\n")))

    def show(self, records: DataFrame, config: Config, rows: int, samples: list[str], profiles: pa.ChunkedArray
             ) -> None:
        """Show the preview of a run of `rows` records, from the lines its sending tasks sampled and the
        `profiles` they passed on (texts of lines of `profile_column`)."""
        sample_events = [json.loads(line) for line in samples]
        if config.profiles:
            self._show(Preview(sample_events, rows=0, approx_event_names=0, properties=[],
                               repeated_profiles=repeated_profiles(records, len(config.mapping.operations))))
            return
        self._show(profile(records.schema["properties"], profiles, rows, sample_events))


def repeated_profiles(records: DataFrame, updates_per_row: int) -> int:
    """How many profiles more than one source row updates: each row gives `updates_per_row` records."""
    per_profile = records.filter(F.col("key").isNotNull()).groupBy("key").count()
    return per_profile.filter(F.col("count") > updates_per_row).count()


def passed_on_parts(passed_on: pa.Table) -> tuple[list[str], pa.ChunkedArray]:
    """From the rows a dry run's sending tasks returned (`record`, `index`, `event`, `profile`): the
    first sample lines of its first partitions, and the profile rows' texts, for `show`."""
    samples = passed_on.select(["index", "event"]).filter(pc.equal(passed_on["record"], SAMPLE))
    lines = samples.sort_by("index")["event"].to_pylist()
    return lines[:SAMPLES_PER_PARTITION], passed_on["profile"].filter(pc.equal(passed_on["record"], PROFILE))


def fingerprint_table(lines: pa.ChunkedArray, width: int) -> pa.Table:
    """Profile texts (lines of `width` comma-separated numbers) as a table of int64 columns, by Arrow's
    CSV reader: the 100,000 lines of a large dry run in about 0.1 s, where its JSON reader took 0.3-0.8 s
    for the same numbers as lists."""
    names = [str(i) for i in range(width)]
    if len(lines) == 0:
        return pa.table({name: pa.array([], pa.int64()) for name in names})
    data, offsets = arrow_chunk(lines.combine_chunks())
    return pa_csv.read_csv(pa.BufferReader(data[offsets[0]:offsets[-1]]),
                           read_options=pa_csv.ReadOptions(column_names=names),
                           convert_options=pa_csv.ConvertOptions(column_types=dict.fromkeys(names, pa.int64())))


def profiled_fields(properties: T.StructField) -> list[T.StructField]:
    return [f for f in properties.dataType.fields if f.name not in CORE_PROPERTIES]


def profile(properties: T.StructField, lines: pa.ChunkedArray, rows: int, sample_events: list[dict]) -> Preview:
    """The preview from the profile rows of a sample of a run's `rows` events, counted in Arrow on the driver."""
    fields = profiled_fields(properties)
    left_out = dict(sorted(properties.metadata.get(LEFT_OUT_KEY, {}).items()))  # JVM order is none
    properties_at, cut_at = 3, 3 + len(fields)
    fingerprints = fingerprint_table(lines, cut_at + len(fields))
    column = fingerprints.column
    profiled = len(fingerprints)
    profiles_of = [
        PropertyProfile(name=f.name, json_type=f.metadata.get(JSON_TYPE_KEY) or json_type(f.dataType),
                        null_share=column(properties_at + i).null_count / profiled if profiled else 0.0,
                        approx_distinct=pc.count_distinct(column(properties_at + i)).as_py(),
                        cut=pc.sum(column(cut_at + i)).as_py() or 0)
        for i, f in enumerate(fields)
    ]
    users = pa.table({"user": column(1), "day": column(2)}).filter(pc.is_valid(column(1)))
    per_user_day = users.group_by(["user", "day"]).aggregate([("user", "count")])["user_count"]
    busiest = pc.max(per_user_day).as_py() or 0
    return Preview(sample_events, profiled, pc.count_distinct(column(0)).as_py(), profiles_of,
                   round(busiest * rows / profiled) if profiled else 0, left_out, of_rows=rows)


def fingerprint(value: Column, dtype: T.DataType) -> Column:
    """A 32-bit hash of a value (those Spark cannot hash, maps and VARIANTs, by their JSON), null for
    null: half the text of a 64-bit one, which the tasks pass on and the driver parses."""
    return F.when(value.isNotNull(), F.hash(F.to_json(value) if unhashable(dtype) else value))


def json_type(dtype: T.DataType) -> str:
    if isinstance(dtype, T.BooleanType):
        return "boolean"
    if isinstance(dtype, T.NumericType):
        return "number"
    if isinstance(dtype, T.ArrayType):
        return "list"
    if isinstance(dtype, (T.MapType, T.StructType)):
        return "object"
    if isinstance(dtype, T.VariantType):
        return "any"  # each row's value has its own JSON type
    return "string"
