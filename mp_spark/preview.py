"""Look before you send: sample events as /import would receive them, and a profile of their properties.

Events are immutable once in Mixpanel, so `--dry-run` shows what would be sent and warns about
what Mixpanel advises against. Everything is computed in Spark, alongside the run's own work.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mp_spark.config import Config
from mp_spark.lookup import to_lookup_rows
from mp_spark.mapping import CORE_PROPERTIES, LEFT_OUT_KEY, left_out_messages
from mp_spark.records import source_rows

MAX_EVENT_NAMES = 5000  # beyond this, names are not indexed or offered in autocomplete
HIGH_CARDINALITY = 0.5  # more distinct values than half the rows: likely an id, not a property
HOT_SHARD_EVENTS_PER_DAY = 200_000  # more for one distinct_id in a day: Mixpanel renames them $hotshard_events


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
    rows: int
    approx_event_names: int
    properties: list[PropertyProfile]
    busiest_user_day: int = 0  # the most events one distinct_id has in one UTC day
    left_out: dict[str, str] = field(default_factory=dict)  # what no event will carry (path -> why)

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
            found.append(f"one distinct_id has {self.busiest_user_day:,} events in a day: Mixpanel renames events "
                         f"beyond {HOT_SHARD_EVENTS_PER_DAY:,} a day to $hotshard_events")
        return found

    def render(self) -> str:
        lines = [f"{len(self.samples)} events as they would be sent:"]
        lines += [f"  {json.dumps(sample, ensure_ascii=False)}" for sample in self.samples]
        if self.properties:  # profiled for events only
            lines.append(f"properties over {self.rows:,} rows:")
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
    """--dry-run's look at what would be sent. The property profile is observed as the events are sent
    (`tap`), so it costs no pass over the source of its own; the samples come from the first records,
    and the busiest user-day from the records' distinct_id and time alone (`show`)."""

    def __init__(self, show: Callable[[Preview], None]) -> None:
        self._show = show
        self._observation = Observation("mp-spark-property-profile")
        self._fields: list[T.StructField] | None = None
        self._left_out: dict[str, str] = {}

    def tap(self, mapped: DataFrame) -> DataFrame:
        """Observe the profile of the `properties` of `to_mixpanel_events` output as it flows past."""
        properties = mapped.schema["properties"]
        self._fields = properties.dataType.fields
        self._left_out = dict(sorted(properties.metadata.get(LEFT_OUT_KEY, {}).items()))  # JVM order is none
        aggregates = [F.count(F.lit(1)).alias("rows"), F.approx_count_distinct("event").alias("event_names")]
        for i, f in enumerate(self._fields):
            value = F.col("properties").getField(f.name)
            aggregates += [F.count(value).alias(f"n{i}"), F.approx_count_distinct(value).alias(f"d{i}"),
                           F.count_if(F.array_contains("cut", f.name)).alias(f"c{i}")]
        return mapped.observe(self._observation, *aggregates)

    def show(self, records: DataFrame, samples: int = 5) -> None:
        """Show the preview of `records` (the run's, without the tap), once the tapped ones are sent."""
        lines = records.filter(F.col("invalid").isNull()).select("line").limit(samples).collect()
        sample_events = [json.loads(row.line) for row in lines]
        if self._fields is None:
            self._show(Preview(sample_events, rows=0, approx_event_names=0, properties=[]))
            return
        totals = self._observation.get
        rows = totals["rows"]
        profiles = [
            PropertyProfile(name=f.name, json_type=json_type(f.dataType),
                            null_share=1 - totals[f"n{i}"] / rows if rows else 0.0,
                            approx_distinct=totals[f"d{i}"], cut=totals[f"c{i}"])
            for i, f in enumerate(self._fields)
            if f.name not in CORE_PROPERTIES
        ]
        day = F.floor(F.col("time") / 86_400_000)  # time is epoch ms: a UTC day, whatever the session's zone
        per_user_day = records.filter(F.col("distinct_id").isNotNull()).groupBy("distinct_id", day).count()
        busiest = per_user_day.agg(F.max("count")).first()[0] or 0
        self._show(Preview(sample_events, rows, totals["event_names"], profiles, busiest, self._left_out))


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
