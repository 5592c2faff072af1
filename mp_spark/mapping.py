"""Source rows to Mixpanel events, as DataFrame transforms: all the per-row work happens in the JVM.

`to_mixpanel_events` gives one row per source row with the columns `event`, `time` (epoch ms),
`distinct_id`, `device_id`, `user_id`, `ip`, `insert_id`, `properties` (a struct of the properties
whose names the schema fixes), `cut` (the names of properties whose value was cut to fit Mixpanel's
limits) and, when `mapping.spread` reads names from the data, `spread` (a map of those, as VARIANT).
`to_json_lines` turns that into the exact JSON line /import receives.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mp_spark.config import ConfigError, MappingConfig
from mp_spark.sources import analysed_expr, column_named
from mp_spark.validation import MAX_PROPERTIES, PLACEHOLDER_IDS

log = logging.getLogger(__name__)

SECONDS_BELOW = 10**11  # an epoch number below this is seconds, above it milliseconds (10^11 s is year 5138)
MS_PER_UNIT = {"s": 1000.0, "ms": 1.0, "us": 0.001}
# Mixpanel's rule for $insert_id; \z, as Java's $ would also match before a final newline
INSERT_ID_PATTERN = "^[0-9a-zA-Z-]{1,36}\\z"
# Mixpanel's date type is YYYY-MM-DDTHH:MM:SS in UTC: years outside 1-9999 have no such form.
MIN_YEAR, MAX_YEAR = 1, 9999
# Mixpanel's limits on property values (its Import API's documentation): strings are cut at 255
# bytes; lists and objects hold fewer than 255 items, nest at most 3 levels, and stay within 8 KB.
MAX_STRING_BYTES = 255
MAX_ITEMS = 254
MAX_DEPTH = 3
MAX_CONTAINER_BYTES = 8192
MAX_PROFILE_CONTAINER_BYTES = 256 * 1024  # a list or object on a user or group profile
# Why a value is left out of every row (fit_value's `left_out`), as the warnings say it.
TOO_DEEP_OR_WIDE = f"values nested deeper than {MAX_DEPTH} levels or beyond {MAX_ITEMS} fields"
BINARY = "binary values (Mixpanel has no type for bytes: map hex(col) or base64(col) instead)"
# The metadata key under which a fitted struct carries its `left_out`, for the dry run to show.
LEFT_OUT_KEY = "mp_spark.left_out"
# A property's metadata key for the JSON type Mixpanel reads, where its Spark type does not say it
# (a date or time sent as text is Mixpanel's date).
JSON_TYPE_KEY = "mp_spark.json_type"

# Set from the mapping's own keys (mapping.time, mapping.distinct_id, ...); a property of the same
# name would silently replace them.
CORE_PROPERTIES = ("time", "distinct_id", "$insert_id", "$device_id", "$user_id", "ip")
# Mixpanel reads these as the event's time and distinct_id too (its documentation of reserved
# property names): a property so named (posthog-js sends `$time`) would contend with the mapped ones.
CORE_ALIASES = ("$time", "$distinct_id")
# Mixpanel gives these names special meaning: `token` is the project token, `$ignore` drops the
# event, `bucket`/`$bucket` hide other events (its documentation of reserved property names).
SPECIAL_PROPERTIES = ("token", "bucket", "$bucket", "$ignore")
RESERVED_PROPERTIES = CORE_PROPERTIES + CORE_ALIASES + SPECIAL_PROPERTIES


def epoch_ntz() -> Column:
    return F.expr("TIMESTAMP_NTZ'1970-01-01 00:00:00'")


# Spark converts a timestamp_ntz through the session time zone in date_format, timestamp_diff and casts
# to timestamp, and a UTC wall clock that falls in a DST gap of that zone comes out shifted. The helpers
# below use only what never involves a zone: timestamp_ntz arithmetic and CAST(timestamp_ntz AS STRING).


def utc_wall_clock(instant: Column) -> Column:
    """A timestamp as the timestamp_ntz of its UTC wall-clock time."""
    return F.timestamp_add("MICROSECOND", F.unix_micros(instant), epoch_ntz())


def utc_epoch_ms(wall_clock: Column) -> Column:
    """A timestamp_ntz read as UTC, as epoch milliseconds (floored, as unix_millis floors a timestamp)."""
    seconds = (wall_clock - epoch_ntz()).cast("interval second").cast("decimal(20,6)")
    return F.floor(seconds * 1000).cast("long")


def has_four_digit_year(value: Column) -> Column:
    """True where a date or timestamp_ntz is within years 1-9999."""
    return F.year(value).between(MIN_YEAR, MAX_YEAR)


def mixpanel_date(wall_clock: Column) -> Column:
    """A UTC wall clock (timestamp_ntz) as Mixpanel's date type, "YYYY-MM-DDTHH:MM:SS" (fraction dropped).

    The cast to string gives "yyyy-MM-dd HH:mm:ss" and the fraction, if any, for years 0-9999 (with
    a sign beyond): the date and the clock are its first 10 and next 8 characters after the space.
    """
    text = wall_clock.cast("string")
    date_and_clock = F.concat(F.substring(text, 1, 10), F.lit("T"), F.substring(text, 12, 8))
    return F.when(has_four_digit_year(wall_clock), date_and_clock)


def to_mixpanel_events(mapping: MappingConfig) -> Callable[[DataFrame], DataFrame]:
    """Return a transform from source rows to mapped events (see the module docstring)."""

    def apply(df: DataFrame) -> DataFrame:
        event = analysed_expr(df, mapping.event, "mapping.event").cast("string")
        time_ms = to_epoch_ms(df, mapping)
        distinct_id, device_id, user_id = (
            optional_string(df, getattr(mapping, key), f"mapping.{key}")
            for key in ("distinct_id", "device_id", "user_id")
        )
        if mapping.null_distinct_id == "empty":  # Mixpanel keeps such events out of user analysis
            distinct_id = F.when(distinct_id.isNull() & device_id.isNull() & user_id.isNull(), F.lit("")).otherwise(
                distinct_id
            )
        ip = mapped_ip(df, mapping.ip)
        properties = event_properties(df, mapping)
        mapped = df.select(
            event.alias("event"),
            time_ms.alias("time"),
            distinct_id.alias("distinct_id"),
            device_id.alias("device_id"),
            user_id.alias("user_id"),
            ip.alias("ip"),
            properties.fixed.alias("properties"),
            properties.cut.alias("cut"),
            *([analysed_expr(df, mapping.insert_id, "mapping.insert_id").cast("string").alias("insert_id")]
              if mapping.insert_id else []),
            *([properties.spread.alias("spread")] if properties.spread is not None else []),
        )
        if properties.spread is not None:  # a column of its own first, so the spread is computed once per row
            mapped = (mapped.withColumn("cut", F.concat("cut", no_null_names("spread.cut")))
                      .withColumn("spread", F.col("spread.values")))
        # The properties' JSON, written once (most of the map side's CPU) for both the $insert_id's
        # content and the line; a column of its own, so Spark keeps it apart from its two readers.
        mapped = mapped.withColumn(PROPERTIES_JSON, F.to_json("properties", JSON_OPTIONS))
        if properties.spread is not None:
            mapped = mapped.withColumn(SPREAD_JSON, F.to_json("spread", JSON_OPTIONS))
        return mapped.withColumn("insert_id", insert_id_column(mapped, mapped_id=bool(mapping.insert_id)))

    return apply


# A null field is left out of the JSON, whatever the session's spark.sql.jsonGenerator.ignoreNullFields:
# sent as null it would overwrite a profile value or fill a property with null.
# A timestamp inside a VARIANT is written in this zone, not the session's: the same line and the same
# $insert_id whatever the cluster's spark.sql.session.timeZone (other temporal values are text already).
JSON_OPTIONS = {"ignoreNullFields": "true", "timeZone": "UTC"}
# Columns of to_mixpanel_events that to_json_lines reads and drops: the JSON of `properties` and `spread`.
PROPERTIES_JSON, SPREAD_JSON = "properties_json", "spread_json"


def to_json_lines(mapped: DataFrame) -> DataFrame:
    """Add `line`: the event as /import wants it, `{"event": ..., "properties": {...}}`, nulls left out:
    the core properties, then the properties' JSON and the spread's entries spliced in."""
    core = F.struct(
        F.col("time"),
        F.col("distinct_id"),
        F.col("insert_id").alias("$insert_id"),
        F.col("device_id").alias("$device_id"),
        F.col("user_id").alias("$user_id"),
        F.col("ip"),
    )
    line = F.to_json(F.struct(F.col("event"), core.alias("properties")), JSON_OPTIONS)
    lines = with_entries(mapped.withColumn("line", line).withColumn("entries", F.col(PROPERTIES_JSON)))
    if SPREAD_JSON in mapped.columns:
        lines = with_entries(lines.withColumn("entries", F.col(SPREAD_JSON)))
    return lines.drop(PROPERTIES_JSON, SPREAD_JSON)


def with_entries(df: DataFrame) -> DataFrame:
    """`line` (a JSON object whose last field is an object: an event's properties, a profile update's
    `$set`) with the entries of `entries` (a JSON object, or null) added to that last object."""
    line, extra = F.col("line"), F.col("entries")
    # In bytes, not characters: finding the characters of every line cost more than writing it.
    head = F.substring(line.cast("binary"), 1, F.octet_length(line) - 2)  # all but the closing "}}"
    separator = F.when(line.endswith("{}}"), F.lit("")).otherwise(F.lit(","))  # that last object is empty
    fields = F.substring(extra.cast("binary"), 2, F.octet_length(extra) - 2)  # all but the braces
    spliced = F.concat(head, separator.cast("binary"), fields, F.lit("}}").cast("binary")).cast("string")
    # Its own projection (Spark keeps it apart as it reads `line` and `entries` more than once), so
    # each is computed once per row.
    return df.withColumn("line", F.when(F.octet_length(extra) > 2, spliced).otherwise(line)).drop("entries")


def mapped_ip(df: DataFrame, expression: str | None) -> Column:
    """`mapping.ip` as text, and "0" (no geolocation) where it gives none or there is none: without an
    ip, Mixpanel would place the event or profile where the Spark cluster is."""
    if expression is None:
        return F.lit("0")
    return F.coalesce(analysed_expr(df, expression, "mapping.ip").cast("string"), F.lit("0"))


def optional_string(df: DataFrame, expression: str | None, key: str) -> Column:
    if expression is None:
        return F.lit(None).cast("string")
    return analysed_expr(df, expression, key).cast("string")


def to_epoch_ms(df: DataFrame, mapping: MappingConfig) -> Column:
    """`mapping.time` as integer epoch milliseconds, whatever the machine's or session's time zone."""
    column = analysed_expr(df, mapping.time, "mapping.time")
    dtype = df.select(column).schema[0].dataType
    if isinstance(dtype, T.TimestampType):
        return F.unix_millis(column)  # an instant: no zone involved
    if isinstance(dtype, T.TimestampNTZType):
        return utc_epoch_ms(column)
    if isinstance(dtype, T.DateType):
        return F.unix_date(column).cast("long") * 86_400_000
    if isinstance(dtype, T.NumericType):
        return _number_to_ms(column, mapping.time_unit)
    if isinstance(dtype, T.StringType):
        return _string_to_ms(column, mapping.time_unit)
    raise ConfigError(f"mapping.time yields {dtype.simpleString()}; expected a timestamp, a date, "
                      "an epoch number or an ISO-8601 string")


def _number_to_ms(number: Column, unit: str | None) -> Column:
    value = number.cast("double")
    if unit is None:
        factor = F.when(F.abs(value) < SECONDS_BELOW, F.lit(1000.0)).otherwise(F.lit(1.0))
    else:
        factor = F.lit(MS_PER_UNIT[unit])
    # try_cast: NaN, infinities and values beyond a long's range give no time (the row is set aside as
    # such), where ANSI mode's cast would stop the whole job.
    return F.round(value * factor).try_cast("long")


def _string_to_ms(text: Column, unit: str | None) -> Column:
    """Epoch digits as numbers; ISO strings with a zone as instants; zone-less ISO strings as UTC.

    A zone follows the clock time: Z, an offset, or a name such as UTC or Europe/Berlin (which the
    cast to timestamp_ntz would silently ignore). Forms that Spark's cast does not take but ISO 8601
    allows (a clock without seconds before a zone, a lowercase t or z, blanks around the text) are
    tried again, written as Spark takes them: only for a row that the first try cannot read.
    """
    # let: the rewritten text is computed once, though the read mentions it five times
    return F.coalesce(_iso_or_epoch_ms(text, unit), let(_as_spark_reads_it(text), lambda t: _iso_or_epoch_ms(t, unit)))


def _as_spark_reads_it(text: Column) -> Column:
    trimmed = F.trim(text)
    upper_t = F.regexp_replace(trimmed, r"^(\d{4}-\d\d-\d\d)t", "$1T")
    upper_z = F.regexp_replace(upper_t, r"(\d)z$", "$1Z")
    return F.regexp_replace(upper_z, r"^(\d{4}-\d\d-\d\d[T ]\d\d:\d\d)(?![:\d])", "$1:00")


def _iso_or_epoch_ms(text: Column, unit: str | None) -> Column:
    has_zone = text.rlike(r"(?i)\d\d:\d\d(:\d\d(\.\d+)?)?\s*(z|[+-]\d\d(:?\d\d)?|[a-z]\S*)$")
    return (
        F.when(text.rlike(r"^-?\d+(\.\d+)?$"), _number_to_ms(text, unit))
        .when(has_zone, F.unix_millis(text.try_cast("timestamp")))
        .otherwise(utc_epoch_ms(text.try_cast("timestamp_ntz")))
    )


@dataclass(frozen=True)
class Properties:
    fixed: Column  # a struct of the properties whose names the schema fixes, fitted to Mixpanel's limits
    cut: Column  # the names of those whose value had to be cut in this row
    spread: Column | None  # struct(values: map<string, variant>, cut: array<string>) of the names in the data


def event_properties(df: DataFrame, mapping: MappingConfig) -> Properties:
    """`mapping.properties`, `mapping.spread` and the included source columns, fitted to Mixpanel's types and
    limits; reserved names are never taken from a spread or a column."""
    for name, expression in mapping.properties.items():
        if expression is not None and name in RESERVED_PROPERTIES:
            raise ConfigError(f"mapping.properties.{name}: {name!r} is reserved by Mixpanel"
                              + (f"; set it with mapping.{name.lstrip('$')}"
                                 if name in CORE_PROPERTIES + CORE_ALIASES else ""))
    return spread_properties(df, mapping.properties, mapping.spread, named_key="mapping.properties",
                             spread_key="mapping.spread", columns=included_columns(df, mapping),
                             reserved=RESERVED_PROPERTIES, room=MAX_PROPERTIES - 1 - len(CORE_PROPERTIES))


def spread_properties(df: DataFrame, named: Mapping[str, str | None], spread: list[str], *, named_key: str,
                      spread_key: str, columns: Collection[str] = (), reserved: Collection[str] = (),
                      room: int | None = None, container_bytes: int = MAX_CONTAINER_BYTES) -> Properties:
    """Properties from three places; a name is taken by the first of them that has it.

    1. `named` (the config key `named_key`): name -> Spark SQL expression. A name mapped to None is
       never sent, whatever else has it.
    2. `spread` (the config key `spread_key`): expressions whose entries become properties. A
       struct's fields have names the schema fixes; a map, a list of key/value structs, a VARIANT
       object or a JSON object string has names found row by row, which yield to every fixed name
       (and the first spread wins).
    3. `columns`: source columns sent under their own names.
    `room`: at most this many properties in all; names found in the data beyond it are cut.
    `container_bytes`: the most JSON a list or object value may take (an event's, or a profile's).
    """
    blocked = {name for name, expression in named.items() if expression is None} | set(reserved)
    fixed = {name: analysed_expr(df, expression, f"{named_key}.{name}")
             for name, expression in named.items() if expression is not None}
    refuse_binary(df, fixed, named_key)
    found: list[Column] = []
    unique_names = True  # only a VARIANT object's names are: from_json and maps keep a repeated key
    for i, expression in enumerate(spread):
        item_key = f"{spread_key}[{i}]"
        column = analysed_expr(df, expression, item_key)
        dtype = df.select(column).schema[0].dataType
        if isinstance(dtype, T.StructType):
            skipped = [f.name for f in dtype.fields if f.name in reserved]
            if skipped:
                log.warning("%s: not sending fields named after reserved Mixpanel properties: %s", item_key,
                            ", ".join(skipped))
            for f in dtype.fields:
                if f.name not in blocked:
                    fixed.setdefault(f.name, column[f.name])
        else:
            found.append(spread_entries(column, dtype, item_key, container_bytes))
            unique_names = unique_names and isinstance(dtype, T.VariantType)
    for name in columns:
        if name not in blocked:
            fixed.setdefault(name, column_named(name))
    struct, cut = fitted_struct(df, fixed, container_bytes)
    if not found:
        return Properties(struct, cut, None)
    left = None if room is None else max(room - len(fixed), 0)
    return Properties(struct, cut, merged_entries(joined(found), taken=sorted(blocked | set(fixed)), room=left,
                                                  repeats=len(found) > 1 or not unique_names))


def joined(found: list[Column]) -> Column:
    """The entries of every spread, in order. A spread null in a row leaves the others' entries (concat
    would make them all null); with none, the row has null, as concat gave, so its $insert_id stays."""
    if len(found) == 1:
        return found[0]
    none = F.array().cast(f"array<{ENTRY}>")
    return let(F.array(*found), lambda spreads: let(
        F.flatten(F.transform(spreads, lambda s: F.coalesce(s, none))),
        lambda entries: F.when(F.exists(spreads, lambda s: s.isNull()) & (F.size(entries) == 0), F.lit(None))
        .otherwise(entries)))


ENTRY = "struct<key: string, value: variant, cut: boolean>"  # one property found in the data, fitted


def no_null_names(names: str) -> Column:
    """The column of names, or none where it is null (a null spread's cut names): concat with a null is null."""
    return F.coalesce(F.col(names), F.array().cast("array<string>"))


def spread_entries(column: Column, dtype: T.DataType, key: str, container_bytes: int = MAX_CONTAINER_BYTES
                   ) -> Column:
    """The entries of a spread value as an array of ENTRY, each value fitted to Mixpanel's limits."""
    if isinstance(dtype, T.MapType) and isinstance(dtype.keyType, T.StringType):
        found = F.transform(F.map_entries(column), lambda e: variant_entry(e["key"], e["value"], dtype.valueType))
    elif isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, T.StructType) and \
            {"key", "value"} <= set(dtype.elementType.fieldNames()):
        key_type, value_type = dtype.elementType["key"].dataType, dtype.elementType["value"].dataType
        found = F.transform(column, lambda e: variant_entry(key_text(e["key"], key_type), e["value"], value_type))
    elif isinstance(dtype, (T.VariantType, T.StringType)):  # a JSON object: its keys become names
        values = (F.try_variant_get(column, "$", "map<string,variant>") if isinstance(dtype, T.VariantType)
                  else F.from_json(column, "map<string,variant>"))  # from_json keeps a repeated key twice
        # Values that are VARIANTs already need no pass of their own to become one.
        return F.transform(F.map_entries(values), lambda e: within_limits(
            variant_entry(e["key"], e["value"], T.VariantType()), container_bytes))
    else:
        raise ConfigError(f"{key}: a spread must yield a struct, a map, a list of key/value structs, a VARIANT "
                          f"object or a JSON object string; got {dtype.simpleString()}")
    return F.transform(found, lambda e: within_limits(e, container_bytes))


def let(value: Column, body: Callable[[Column], Column]) -> Column:
    """`body(value)`, with `value` computed once however often the body reads it.

    Spark evaluates the lambdas of higher-order functions without code generation, so each mention
    of an expression in one is computed again; a lambda's own variable is computed once.
    """
    return F.element_at(F.transform(F.array(value), body), 1)


def variant_entry(name: Column, value: Column, dtype: T.DataType) -> Column:
    """One ENTRY whose typed value is fitted as properties are (fit_value), and made a VARIANT."""
    cut = F.lit(False)
    if isinstance(dtype, T.VariantType):
        return F.struct(name.alias("key"), value.alias("value"), cut.alias("cut"))
    fitted = fit_value(value, dtype, "", [])
    if fitted is None:  # a type Mixpanel cannot take at this depth
        return F.struct(name.alias("key"), F.lit(None).cast("variant").alias("value"), cut.alias("cut"))
    nested = isinstance(dtype, (T.ArrayType, T.MapType, T.StructType))
    value = F.to_variant_object(fitted.value) if nested else fitted.value.cast("variant")
    cut = cut if fitted.cut is None else F.coalesce(fitted.cut, F.lit(False))
    return F.struct(name.alias("key"), value.alias("value"), cut.alias("cut"))


def within_limits(entry: Column, container_bytes: int = MAX_CONTAINER_BYTES) -> Column:
    """An ENTRY whose value, found in the data, is cut to Mixpanel's limits: its type is known only row
    by row, and shows in its JSON's first character."""
    value = entry["value"]

    def fitted(json: Column, text: Column) -> Column:
        too_long = json.startswith('"') & (F.octet_length(text) > MAX_STRING_BYTES)
        too_big = (json.startswith("{") | json.startswith("[")) & (F.octet_length(json) > container_bytes)
        return F.struct(entry["key"].alias("key"),
                        F.when(too_long, utf8_prefix(text, MAX_STRING_BYTES).cast("variant")).when(~too_big, value)
                        .alias("value"),
                        (entry["cut"] | F.coalesce(too_long | too_big, F.lit(False))).alias("cut"))

    return let(F.to_json(value, JSON_OPTIONS), lambda json: let(F.try_variant_get(value, "$", "string"),
                                                  lambda text: fitted(json, text)))


def merged_entries(entries: Column, *, taken: list[str], room: int | None, repeats: bool = True) -> Column:
    """struct(values, cut): the entries as a map (no taken names, no nulls, the first of a repeated name,
    at most `room`) and the names whose value was cut, or left out for its size or for want of room.
    `repeats`: whether a name can come more than once (not from one VARIANT object)."""

    def usable(found: Column) -> Column:  # names not taken, with a value (or a value cut away)
        return F.filter(found, lambda e: e["key"].isNotNull() & ~e["key"].isin(*taken) & (
            e["cut"] | (e["value"].isNotNull() & ~F.is_variant_null(e["value"]))))

    def first_of_each_name(found: Column) -> Column:
        return let(F.transform(found, lambda e: e["key"]), lambda names: F.filter(
            found, lambda e, i: F.array_position(names, e["key"]) == i + 1))

    def merged(firsts: Column, valued: Column) -> Column:  # each name once; those of them with a value
        kept = valued if room is None else F.slice(valued, 1, room)
        cut = F.transform(F.filter(firsts, lambda e: e["cut"]), lambda e: e["key"])
        if room is not None:  # and those for which there was no room (a length never negative, however evaluated)
            no_room = F.slice(valued, room + 1, F.greatest(F.size(valued) - room, F.lit(0)))
            cut = F.when(F.size(valued) > room, F.array_union(cut, F.transform(no_room, lambda e: e["key"]))) \
                .otherwise(cut)
        values = F.map_from_entries(F.transform(kept, lambda e: F.struct(e["key"], e["value"])))
        return F.struct(values.alias("values"), cut.alias("cut"))

    def from_firsts(firsts: Column) -> Column:
        return let(F.filter(firsts, lambda e: e["value"].isNotNull()), lambda valued: merged(firsts, valued))

    def from_usable(found: Column) -> Column:  # a lambda's variable: computed once however often read
        return let(first_of_each_name(found), from_firsts) if repeats else from_firsts(found)

    return let(usable(entries), from_usable)


def value_types(df: DataFrame, columns: Mapping[str, Column]) -> T.StructType:
    """The Spark type of each named value, resolved against `df`'s schema (no data is read)."""
    return df.select(*[c.alias(n) for n, c in columns.items()]).schema if columns else T.StructType()


def refuse_binary(df: DataFrame, columns: Mapping[str, Column], key: str) -> None:
    """Values mapped by name under `key` must not be binary: left out, they would vanish unseen."""
    for f in value_types(df, columns).fields:
        if isinstance(f.dataType, T.BinaryType):
            raise ConfigError(f"{key}.{f.name} is binary, and Mixpanel has no type for bytes: "
                              "send them as text, e.g. hex(...) or base64(...) of the expression")


def fitted_struct(df: DataFrame, columns: dict[str, Column], container_bytes: int = MAX_CONTAINER_BYTES
                  ) -> tuple[Column, Column]:
    """A struct of the named values fitted to Mixpanel's types and limits, and the names cut in each row.

    What is left out of every row is logged, and carried in the struct's metadata under LEFT_OUT_KEY.
    """
    left_out: dict[str, str] = {}
    values, cut_names = [], []
    for f in value_types(df, columns).fields:
        fitted = fit_value(columns[f.name], f.dataType, f.name, left_out)
        if fitted is None:
            continue
        value, cut = fitted.value, fitted.cut
        if isinstance(f.dataType, (T.ArrayType, T.MapType, T.StructType)):
            too_big = F.octet_length(F.to_json(value, JSON_OPTIONS)) > container_bytes  # the JSON sent
            value = F.when(~too_big, value)
            cut = too_big if cut is None else (cut | too_big)
        elif isinstance(f.dataType, T.VariantType):  # its type shows row by row: fitted as a spread's values are
            entry = within_limits(F.struct(F.lit(f.name).alias("key"), value.alias("value"), F.lit(False).alias("cut")),
                                  container_bytes)
            value, cut = entry["value"], entry["cut"]
        if isinstance(f.dataType, (T.DateType, T.TimestampType, T.TimestampNTZType)):  # sent as text
            values.append(value.alias(f.name, metadata={JSON_TYPE_KEY: "date"}))
        else:
            values.append(value.alias(f.name))
        if cut is not None:
            cut_names.append((f.name, cut))
    warn_left_out(left_out)
    # Concatenated, not filtered: a lambda (array_compact's) would keep Spark from compiling the projection.
    none = F.array().cast("array<string>")
    cut = F.concat(*[F.when(is_cut, F.array(F.lit(name))).otherwise(none) for name, is_cut in cut_names]) \
        if cut_names else none
    # An alias is what carries metadata; the caller's own alias ("properties", "$set") keeps it.
    return F.struct(*values).alias("fitted", metadata={LEFT_OUT_KEY: left_out}), cut


def warn_left_out(left_out: Mapping[str, str]) -> None:
    for message in left_out_messages(left_out):
        log.warning("%s", message)


def left_out_messages(left_out: Mapping[str, str]) -> list[str]:
    """One line per reason, naming the paths left out for it: "not sending <reason>: a.b, items[]"."""
    paths_by_reason: dict[str, list[str]] = {}
    for path, reason in left_out.items():
        paths_by_reason.setdefault(reason, []).append(path)
    return [f"not sending {reason}: {', '.join(paths)}" for reason, paths in paths_by_reason.items()]


def included_columns(df: DataFrame, mapping: MappingConfig) -> list[str]:
    """Source columns sent under their own names; reserved names are left out with a warning."""
    include = mapping.include_columns
    chosen = list(df.columns) if include == "*" else list(include)
    patterns = [n for n in mapping.exclude_columns if "*" in n]  # such as context_*: may match no column
    exact = [n for n in mapping.exclude_columns if "*" not in n]
    for key, names in (("mapping.include_columns", chosen), ("mapping.exclude_columns", exact)):
        unknown = [n for n in names if n not in df.columns]
        if unknown:
            raise ConfigError(f"{key}: unknown column {unknown[0]!r} (source columns: {', '.join(df.columns)})")
    kept = [n for n in chosen if n not in exact and not any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    reserved = [n for n in kept if n in RESERVED_PROPERTIES]
    if reserved:
        log.warning("not sending source columns named after reserved Mixpanel properties: %s "
                    "(map them under another name in mapping.properties)", ", ".join(reserved))
    return [n for n in kept if n not in RESERVED_PROPERTIES]


@dataclass(frozen=True)
class Fitted:
    value: Column  # the value as Mixpanel should receive it
    cut: Column | None  # true where this row's value had to be cut; None for types that never are


def fit_value(column: Column, dtype: T.DataType, path: str, left_out: dict[str, str], level: int = 1
              ) -> Fitted | None:
    """A Spark value rewritten into the JSON Mixpanel understands, within its limits.

    Strings over 255 bytes are cut on a character boundary; lists and objects keep their first 254
    items; dates and times become UTC text, and are left out outside years 1-9999. What cannot be
    sent for any row (binary, a list or object nested deeper than 3 levels, struct fields beyond
    254, a list or map of what cannot be sent) is left out, and `left_out` maps its path to the
    reason; None means all of it is.
    """
    reason = unsendable(dtype, level)
    if reason:
        left_out[path] = reason
        return None
    if isinstance(dtype, T.StringType):
        too_long = F.octet_length(column) > MAX_STRING_BYTES
        return Fitted(F.when(too_long, utf8_prefix(column, MAX_STRING_BYTES)).otherwise(column), too_long)
    if isinstance(dtype, T.ArrayType):
        item_type = dtype.elementType
        kept = F.transform(F.slice(column, 1, MAX_ITEMS),
                           lambda item: fit_value(item, item_type, f"{path}[]", left_out, level + 1).value)
        return Fitted(kept, any_item_cut(column, F.size(column), item_type, level + 1))
    if isinstance(dtype, T.MapType):
        value_type = dtype.valueType
        first_items = F.map_from_entries(F.slice(F.map_entries(column), 1, MAX_ITEMS))
        kept = F.transform_values(
            first_items, lambda _key, value: fit_value(value, value_type, f"{path}{{}}", left_out, level + 1).value
        )
        if isinstance(dtype.keyType, (T.DateType, T.TimestampType, T.TimestampNTZType)):
            # to_json writes such keys as Spark holds them (days, microseconds). Outside years 1-9999 they
            # are left out, as such values are.
            key_type = dtype.keyType
            in_years = F.map_filter(kept, lambda key, _value: has_four_digit_year(wall_clock_of(key, key_type)))
            kept = F.transform_keys(in_years, lambda key, _value: key_text(key, key_type))
        return Fitted(kept, any_item_cut(F.map_values(column), F.size(column), value_type, level + 1))
    if isinstance(dtype, T.StructType):
        left_out.update({f"{path}.{f.name}": TOO_DEEP_OR_WIDE for f in dtype.fields[MAX_ITEMS:]})
        fields, cuts = [], []
        for f in dtype.fields[:MAX_ITEMS]:
            fitted = fit_value(column[f.name], f.dataType, f"{path}.{f.name}", left_out, level + 1)
            if fitted is not None:
                fields.append(fitted.value.alias(f.name))
                cuts += [] if fitted.cut is None else [F.coalesce(fitted.cut, F.lit(False))]
        cut = F.greatest(*cuts) if len(cuts) > 1 else (cuts[0] if cuts else None)
        return Fitted(F.when(column.isNotNull(), F.struct(*fields)), cut)
    if isinstance(dtype, (T.TimestampType, T.TimestampNTZType)):
        return Fitted(mixpanel_date(wall_clock_of(column, dtype)), None)
    if isinstance(dtype, T.DateType):
        return Fitted(F.when(has_four_digit_year(column), date_text(column)), None)
    if isinstance(dtype, (T.FloatType, T.DoubleType)):
        # NaN and Infinity are not JSON: leave the value out rather than send invalid JSON.
        finite = ~F.isnan(column) & (F.abs(column) != F.lit(float("inf")))
        return Fitted(F.when(finite, column), None)
    return Fitted(column, None)  # numbers, decimals, booleans: to_json writes them as Mixpanel reads them


def key_text(key: Column, dtype: T.DataType) -> Column:
    """A map key or a spread's name as text: a date "2024-01-02", a time its UTC "2024-01-02T03:04:05.25",
    its fraction kept so that distinct keys stay distinct (a map with a repeated key fails the
    query); other types as Spark casts them."""
    if isinstance(dtype, T.DateType):
        return date_text(key)
    if isinstance(dtype, (T.TimestampType, T.TimestampNTZType)):
        return F.regexp_replace(wall_clock_of(key, dtype).cast("string"), " ", "T")
    return key.cast("string")


def date_text(date: Column) -> Column:
    """A date in years 1-9999 as "YYYY-MM-DD", from its fields: to_json and a cast to text follow
    spark.sql.legacy.timeParserPolicy, whose calendar writes 1582-10-05 as "1582-10-15"."""
    return F.format_string("%04d-%02d-%02d", F.year(date), F.month(date), F.dayofmonth(date))


def wall_clock_of(value: Column, dtype: T.DataType) -> Column:
    """A timestamp as its UTC wall clock; a date or timestamp_ntz as it is."""
    return utc_wall_clock(value) if isinstance(dtype, T.TimestampType) else value


def unsendable(dtype: T.DataType, level: int) -> str | None:
    """Why no value of this type at this nesting level can be sent, or None (struct fields are dropped alone)."""
    if isinstance(dtype, T.BinaryType) or (isinstance(dtype, T.MapType) and isinstance(dtype.keyType, T.BinaryType)):
        return BINARY  # (to_json would write a binary map key as a JVM object id: "[B@436cd83c")
    if isinstance(dtype, (T.ArrayType, T.MapType, T.StructType)) and level > MAX_DEPTH:
        return TOO_DEEP_OR_WIDE
    if isinstance(dtype, T.ArrayType):
        return unsendable(dtype.elementType, level + 1)
    if isinstance(dtype, T.MapType):
        return unsendable(dtype.valueType, level + 1)
    return None


def any_item_cut(items: Column, size: Column, item_type: T.DataType, item_level: int) -> Column:
    """True where a list or map has more than MAX_ITEMS items, or one of its items is cut."""
    too_many = size > MAX_ITEMS

    def item_cut(item: Column) -> Column | None:
        return fit_value(item, item_type, "", {}, item_level).cut

    if item_cut(F.lit(None).cast(item_type)) is None:  # items of this type are never cut
        return too_many
    return too_many | F.exists(items, lambda item: F.coalesce(item_cut(item), F.lit(False)))


def utf8_prefix(text: Column, max_bytes: int) -> Column:
    """The longest prefix of `text` within `max_bytes` of UTF-8 that does not split a character.

    Cut the bytes; a character split by the cut becomes U+FFFD when the bytes are made valid UTF-8
    again, and is dropped. (A U+FFFD the text itself had right at the cut goes too: no loss worth
    a bigger expression, which every string property of every row carries.)
    """
    cut_bytes = F.substring(text.cast("binary"), 1, max_bytes).cast("string")
    return F.regexp_replace(F.make_valid_utf8(cut_bytes), "\ufffd+$", "")


def insert_id_column(mapped: DataFrame, *, mapped_id: bool) -> Column:
    """A deterministic `$insert_id`, so a rerun sends the same ids and Mixpanel deduplicates them.

    Without `mapping.insert_id` it is the first 36 hex digits of a SHA-256 over the event, time,
    identity (distinct_id, device_id, user_id) and properties (those found by a spread too). A mapped
    id that breaks Mixpanel's rule (at most 36 of [0-9a-zA-Z-]) is replaced by a hash of itself,
    which keeps it stable and unique; a null, empty or placeholder one (such as "0" or "null") falls
    back to the content hash.
    """
    derived = F.substring(F.sha2(content_json(mapped), 256), 1, 36)
    if not mapped_id:
        return derived
    given = F.col("insert_id")
    # An empty or placeholder id is no id: hashed, every row with it would get the same one, and
    # Mixpanel would keep one event of each day's lot.
    no_id = given.isNull() | (F.trim(given) == "") | F.lower(F.trim(given)).isin(*PLACEHOLDER_IDS)
    return (
        F.when(no_id, derived)
        .when(given.rlike(INSERT_ID_PATTERN), given)
        .otherwise(F.substring(F.sha2(given, 256), 1, 36))
    )


def content_json(mapped: DataFrame) -> Column:
    """What the content hash reads: the JSON of struct(event, time, distinct_id, device_id, user_id,
    properties[, spread]), byte for byte as to_json writes it, made from the properties' (and spread's)
    JSON already written for the line. These bytes fix every derived $insert_id: a change re-ids
    every event of a rerun, which Mixpanel would then keep twice."""
    identity = F.to_json(F.struct("event", "time", "distinct_id", "device_id", "user_id"), JSON_OPTIONS)
    open_object = F.substring(identity.cast("binary"), 1, F.octet_length(identity) - 1)  # all but its "}"
    separator = F.when(identity == "{}", F.lit("")).otherwise(F.lit(","))
    spread = F.lit("") if SPREAD_JSON not in mapped.columns else \
        F.coalesce(F.concat(F.lit(',"spread":'), F.col(SPREAD_JSON)), F.lit(""))
    return F.concat(open_object, separator.cast("binary"), F.lit('"properties":').cast("binary"),
                    F.col(PROPERTIES_JSON).cast("binary"), spread.cast("binary"), F.lit("}").cast("binary"))
