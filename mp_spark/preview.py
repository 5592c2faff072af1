"""Look before you send: sample events as /import would receive them, and a profile of their properties.

Events are immutable once in Mixpanel, so `--dry-run` shows what would be sent and warns about
what Mixpanel advises against. Everything is computed in Spark, alongside the run's own work.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mp_spark.config import Config
from mp_spark.lookup import to_lookup_rows
from mp_spark.mapping import CORE_PROPERTIES, LEFT_OUT_KEY, left_out_messages, to_mixpanel_events
from mp_spark.records import source_rows

MAX_EVENT_NAMES = 5000  # beyond this, names are not indexed or offered in autocomplete
HIGH_CARDINALITY = 0.5  # more distinct values than half the rows: likely an id, not a property
HOT_SHARD_EVENTS_PER_DAY = 200_000  # more for one distinct_id in a day: Mixpanel renames them $hotshard_events
PROFILE_SAMPLE_ROWS = 100_000  # about this many source rows are profiled


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

    @property
    def sampled(self) -> bool:
        return self.of_rows > self.rows

    def warnings(self) -> list[str]:
        found = left_out_messages(self.left_out)
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

    def render(self) -> str:
        lines = [f"{len(self.samples)} events as they would be sent:"]
        lines += [f"  {json.dumps(sample, ensure_ascii=False)}" for sample in self.samples]
        if self.properties:  # profiled for events only
            lines.append(f"properties over a sample of {self.rows:,} of {self.of_rows:,} rows:" if self.sampled
                         else f"properties over {self.rows:,} rows:")
            lines.append(f"  {'name':<28}{'type':<9}{'null':>7}{'distinct':>12}{'cut':>10}")
        for p in self.properties:
            lines.append(f"  {p.name[:27]:<28}{p.json_type:<9}{p.null_share:>7.0%}{p.approx_distinct:>12,}"
                         f"{p.cut:>10,}")
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
    """--dry-run's look at what would be sent, once it is sent: the first records as samples, and the
    property profile and the busiest user-day from a sample of the source of at most `sample_rows`
    rows (a profile of every row cost a 1M-event dry run more than half again its time)."""

    def __init__(self, show: Callable[[Preview], None], sample_rows: int = PROFILE_SAMPLE_ROWS) -> None:
        self._show = show
        self._sample_rows = sample_rows

    def show(self, source: DataFrame, records: DataFrame, config: Config, rows: int, samples: int = 5) -> None:
        """Show the preview of the run whose `source` gave `records`, `rows` of them."""
        lines = records.filter(F.col("invalid").isNull()).select("line").limit(samples).collect()
        sample_events = [json.loads(row.line) for row in lines]
        if config.profiles:  # profile updates: samples only
            self._show(Preview(sample_events, rows=0, approx_event_names=0, properties=[]))
            return
        fraction = min(1.0, self._sample_rows / rows) if rows else 1.0
        sampled = source if fraction >= 1.0 else source.sample(fraction=fraction, seed=20_240_601)
        mapped = sampled.transform(to_mixpanel_events(config.mapping)).select(
            "event", "properties", "cut", "distinct_id", "time").cache()  # read by two queries
        try:
            self._show(self._profile(mapped, fraction, rows, sample_events))
        finally:
            mapped.unpersist()

    @staticmethod
    def _profile(mapped: DataFrame, fraction: float, rows: int, sample_events: list[dict]) -> Preview:
        properties = mapped.schema["properties"]
        fields = properties.dataType.fields
        left_out = dict(sorted(properties.metadata.get(LEFT_OUT_KEY, {}).items()))  # JVM order is none
        aggregates = [F.count(F.lit(1)).alias("rows"), F.approx_count_distinct("event").alias("event_names")]
        for i, f in enumerate(fields):
            value = F.col("properties").getField(f.name)
            aggregates += [F.count(value).alias(f"n{i}"), F.approx_count_distinct(value).alias(f"d{i}"),
                           F.count_if(F.array_contains("cut", f.name)).alias(f"c{i}")]
        totals = mapped.agg(*aggregates).first()
        profiled = totals["rows"]
        profiles = [
            PropertyProfile(name=f.name, json_type=json_type(f.dataType),
                            null_share=1 - totals[f"n{i}"] / profiled if profiled else 0.0,
                            approx_distinct=totals[f"d{i}"], cut=totals[f"c{i}"])
            for i, f in enumerate(fields)
            if f.name not in CORE_PROPERTIES
        ]
        day = F.floor(F.col("time") / 86_400_000)  # time is epoch ms: a UTC day, whatever the session's zone
        per_user_day = mapped.filter(F.col("distinct_id").isNotNull()).groupBy("distinct_id", day).count()
        busiest = per_user_day.agg(F.max("count")).first()[0] or 0
        return Preview(sample_events, profiled, totals["event_names"], profiles, round(busiest / fraction), left_out,
                       of_rows=rows)


def json_type(dtype: T.DataType) -> str:
    if isinstance(dtype, T.BooleanType):
        return "boolean"
    if isinstance(dtype, T.NumericType):
        return "number"
    if isinstance(dtype, (T.ArrayType,)):
        return "list"
    if isinstance(dtype, (T.MapType, T.StructType)):
        return "object"
    if isinstance(dtype, (T.TimestampType, T.TimestampNTZType, T.DateType)):
        return "date"
    return "string"
