"""Mapping presets: a vendor's export, as it lands in a lake, mapped to Mixpanel in one line (mapping.preset).

A preset is a mapping like one a user writes: Spark SQL expressions over the vendor's columns.
`expand_preset` (called by parse_config) fills it in before the mapping is built, and the user's own
mapping.* keys override it key by key; `properties` and `set` merge name by name, and a name mapped
to null is not sent. `prepare_source` readies the source for the preset, and `render_mapping` shows
the result for --dry-run. What each vendor's fields become, and the vendor documents behind them:
docs/presets.md.
"""

from __future__ import annotations

import dataclasses
import logging
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mp_spark.config import Config, ConfigError, LookupTableMappingConfig, MappingConfig, ProfileMappingConfig
from mp_spark.sources import analysed_expr, column_named

log = logging.getLogger(__name__)

MERGED_KEYS = ("properties", "set")  # dict-valued keys a user's mapping extends name by name


@dataclass(frozen=True)
class Spec:
    """What a preset gives for one job.kind and set of options."""

    mapping: dict[str, Any]  # mapping.* keys, as a user would write them
    # Columns the mapping reads that an export may lack (added as nulls of this type). "variant" marks
    # the vendor's objects: a JSON string, a struct or a map in the lake, all read as VARIANT.
    columns: dict[str, str] = field(default_factory=dict)
    internal: str | None = None  # SQL condition: the vendor's own bookkeeping rows (skip_internal_events)
    keep: str | None = None  # SQL condition: the rows that are profiles at all (people presets)
    latest: tuple[str, tuple[str, ...]] | None = None  # people: (user, ordering): each user's latest row only


@dataclass(frozen=True)
class Preset:
    build: Callable[[str, dict[str, Any]], Spec]  # (job.kind, options) -> Spec
    kinds: tuple[str, ...]  # the job kinds it has a mapping for
    options: dict[str, Any] = field(default_factory=dict)  # its own options and their defaults
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)  # allowed values of a str option


COMMON_OPTIONS = {"skip_internal_events": False}  # leave out the vendor's own bookkeeping events


def variant_field(column: str, path: str, type_: str = "string") -> str:
    """A field of an object column read as VARIANT (`path` like $.page.url); null where a row lacks it."""
    return f"try_variant_get({column}, '{path}', '{type_}')"


# --- Google Analytics 4: the BigQuery export (events_YYYYMMDD), as Parquet --------------------------

def ga4_value(value: str) -> str:
    """GA4 stores each parameter's value in one of four typed fields: the first that is set, as VARIANT."""
    return "coalesce(" + ", ".join(f"cast({value}.{f} AS variant)" for f in
                                   ("string_value", "int_value", "float_value", "double_value")) + ")"


def ga4_entries(column: str) -> str:
    """event_params or user_properties as key/value entries for mapping.spread."""
    return f"transform({column}, p -> struct(p.key AS key, {ga4_value('p.value')} AS value))"


def ga4_param(key: str) -> str:
    return f"get(filter(event_params, p -> p.key = '{key}'), 0).value.string_value"


GA4_PARAMS = "array<struct<key: string, value: struct<string_value: string, int_value: bigint, " \
             "float_value: double, double_value: double>>>"
GA4_ITEMS = "array<struct<item_id: string, item_name: string, price: double, quantity: bigint>>"
GA4_RENAMED_PARAMS = {"page_location": "$current_url", "page_referrer": "$referrer",
                      "page_title": "current_page_title"}


def ga4(kind: str, options: dict[str, Any]) -> Spec:
    def device(path: str) -> str:
        return variant_field("device", f"$.{path}")

    traffic = {f"utm_{name}": variant_field("collected_traffic_source", f"$.manual_{field_}") for name, field_ in
               (("source", "source"), ("medium", "medium"), ("campaign", "campaign_name"), ("term", "term"),
                ("content", "content"))}
    identity = ("user_pseudo_id", "cast(event_timestamp AS string)", "event_name",
                "cast(event_bundle_sequence_id AS string)",
                # The options the session would take from its own settings: the id must not change with them.
                "to_json(event_params, map('ignoreNullFields', 'true'))")
    return Spec(
        mapping={
            "event": "event_name",
            "time": "event_timestamp",
            "time_unit": "us",
            "device_id": "user_pseudo_id",
            "user_id": "user_id",
            # GA4 has no event id: a hash of what tells its events apart, stable whatever else is mapped
            "insert_id": f"substring(sha2(concat_ws('-', {', '.join(identity)}), 256), 1, 36)",
            "properties": {
                **{target: ga4_param(param) for param, target in GA4_RENAMED_PARAMS.items()},
                **dict.fromkeys(GA4_RENAMED_PARAMS),  # sent under Mixpanel's names only
                "$os": device("operating_system"),
                "$os_version": device("operating_system_version"),
                "$browser": f"coalesce({device('web_info.browser')}, {device('browser')})",
                "$browser_version": f"coalesce({device('web_info.browser_version')}, {device('browser_version')})",
                # on a desktop GA4 fills these with the browser's name and maker
                "$model": f"CASE WHEN {device('category')} <> 'desktop' THEN {device('mobile_model_name')} END",
                "$manufacturer": f"CASE WHEN {device('category')} <> 'desktop' THEN {device('mobile_brand_name')} END",
                "device_category": device("category"),
                "device_language": device("language"),
                "$city": variant_field("geo", "$.city"),
                "$region": variant_field("geo", "$.region"),
                "geo_country": variant_field("geo", "$.country"),  # a name: mp_country_code takes ISO codes
                "geo_continent": variant_field("geo", "$.continent"),
                "$app_version_string": variant_field("app_info", "$.version"),
                "app_id": variant_field("app_info", "$.id"),
                **traffic,
                "platform": "platform",
                "stream_id": "stream_id",
                "event_value_in_usd": "event_value_in_usd",
                "items": "CASE WHEN size(items) > 0 THEN items END",  # e-commerce events' products
            },
            "spread": [ga4_entries("event_params"), ga4_entries("user_properties")],
        },
        columns={"device": "variant", "geo": "variant", "app_info": "variant", "collected_traffic_source": "variant",
                 "user_properties": GA4_PARAMS, "items": GA4_ITEMS, "platform": "string", "stream_id": "string",
                 "event_value_in_usd": "double"},
        internal="event_name IN ('session_start', 'first_visit')",
    )


# --- Amplitude: the Export API and Amazon S3 export (one event per JSON line) -----------------------

AMPLITUDE_COLUMNS = {
    **dict.fromkeys(("event_properties", "user_properties", "groups"), "variant"),
    **dict.fromkeys(("$insert_id", "platform", "os_name", "os_version", "device_model", "device_manufacturer",
                     "device_brand", "device_carrier", "device_family", "device_type", "city", "region", "country",
                     "dma", "language", "version_name", "start_version", "library"), "string"),
    **dict.fromkeys(("amplitude_id", "session_id", "event_id"), "bigint"),
    "paying": "boolean",
    "location_lat": "double",
    "location_lng": "double",
}


def amplitude(kind: str, options: dict[str, Any]) -> Spec:
    if kind == "people":  # Mixpanel's guide: each user's properties as of their latest event (that has any)
        has_properties = "size(map_filter(try_variant_get(user_properties, '$', 'map<string,variant>'), " \
                         "(k, v) -> NOT is_variant_null(v))) > 0"
        return Spec(mapping={"distinct_id": "user_id", "spread": ["user_properties"]},
                    columns={"user_properties": "variant"}, keep=has_properties,
                    latest=("user_id", ("try_cast(event_time AS timestamp_ntz)", "uuid")))
    web = "lower(platform) = 'web'"  # on the web os_name and os_version are the browser's

    def unless_web(column: str) -> str:
        return f"CASE WHEN {web} THEN NULL ELSE {column} END"

    def if_web(column: str) -> str:
        return f"CASE WHEN {web} THEN {column} END"

    kept = ("platform", "device_family", "device_type", "country", "dma", "language", "start_version",
            "amplitude_id", "session_id", "event_id", "paying", "location_lat", "location_lng")
    return Spec(
        mapping={
            "event": "event_type",
            "time": "event_time",
            "user_id": "user_id",
            "device_id": "device_id",
            "insert_id": "coalesce(`$insert_id`, uuid)",
            "properties": {
                "$os": unless_web("os_name"),
                "$os_version": unless_web("os_version"),
                "$browser": if_web("os_name"),
                "$browser_version": if_web("os_version"),
                "$model": "device_model",
                "$manufacturer": "device_manufacturer",
                "$brand": "device_brand",
                "$carrier": "device_carrier",
                "$city": "city",
                "$region": "region",
                "$app_version_string": "version_name",
                "mp_lib": "nullif(split_part(library, '/', 1), '')",  # amplitude-ios/3.2.1
                "$lib_version": "nullif(split_part(library, '/', 2), '')",
                **{name: name for name in kept},
            },
            "spread": ["event_properties", "groups", "user_properties"],
        },
        columns=AMPLITUDE_COLUMNS,
        internal="event_type IN ('$identify', '$groupidentify', '[Amplitude] Start Session', "
                 "'[Amplitude] End Session')",
    )


# --- Segment: the S3 destination (one call per JSON line) or a warehouse's tracks tables -------------

BROWSERS = (  # (user agent pattern, Mixpanel's $browser, the token before the version), first match wins
    ("Edg/", "Microsoft Edge", "Edg"), ("OPR/", "Opera", "OPR"), ("CriOS/", "Chrome iOS", "CriOS"),
    ("FxiOS/", "Firefox iOS", "FxiOS"), ("Chrome/", "Chrome", "Chrome"), ("Firefox/", "Firefox", "Firefox"),
    ("Mobile/.*Safari/", "Mobile Safari", "Version"), ("Safari/", "Safari", "Version"),
)


def browser(agent: str) -> str:
    return "CASE " + " ".join(f"WHEN {agent} RLIKE '{pattern}' THEN '{name}'" for pattern, name, _ in BROWSERS) + " END"


def browser_version(agent: str) -> str:
    """The major.minor version as a number, as Mixpanel's JavaScript SDK sends it."""
    return "CASE " + " ".join(
        f"WHEN {agent} RLIKE '{pattern}' THEN try_cast(regexp_extract({agent}, '{token}/([0-9]+([.][0-9]+)?)', 1) "
        "AS double)" for pattern, _, token in BROWSERS) + " END"


# Mixpanel name -> where a Segment context field is (its path in context; in a warehouse, context_ + snake_case)
SEGMENT_CONTEXT = {
    "$current_url": "page.url", "$referrer": "page.referrer", "current_url_path": "page.path",
    "current_url_search": "page.search", "$os": "os.name", "$os_version": "os.version", "$device": "device.name",
    "$model": "device.model", "$manufacturer": "device.manufacturer", "$carrier": "network.carrier",
    "$wifi": "network.wifi", "$screen_width": "screen.width", "$screen_height": "screen.height",
    "$app_version_string": "app.version", "$app_build_number": "app.build", "app_name": "app.name",
    "mp_lib": "library.name", "$lib_version": "library.version", "$city": "location.city",
    "$region": "location.region", "country": "location.country", "utm_source": "campaign.source",
    "utm_medium": "campaign.medium", "utm_campaign": "campaign.name", "utm_term": "campaign.term",
    "utm_content": "campaign.content", "locale": "locale", "timezone": "timezone",
}
SEGMENT_TYPES = {"$wifi": "boolean", "$screen_width": "int", "$screen_height": "int"}
# A warehouse's own columns in every table (anything else in a tracks table is a property)
SEGMENT_WAREHOUSE_COLUMNS = {**dict.fromkeys(("anonymous_id", "user_id", "event"), "string"),
                             **dict.fromkeys(("received_at", "sent_at", "original_timestamp", "uuid_ts",
                                              "loaded_at"), "timestamp")}


def segment(kind: str, options: dict[str, Any]) -> Spec:
    if options["shape"] == "warehouse":
        return segment_warehouse()
    context = {name: variant_field("context", f"$.{path}", SEGMENT_TYPES.get(name, "string"))
               for name, path in SEGMENT_CONTEXT.items()}
    agent = variant_field("context", "$.userAgent")
    title = variant_field("context", "$.page.title")
    return Spec(
        mapping={
            # track calls are events; page and screen calls are Mixpanel's page and screen views
            "event": "CASE type WHEN 'track' THEN event WHEN 'page' THEN '$mp_web_page_view' "
                     "WHEN 'screen' THEN '$mp_page_view' END",
            "time": "timestamp",
            "user_id": "userId",
            "device_id": "anonymousId",
            "insert_id": "messageId",
            "properties": {
                **context,
                "current_page_title": f"CASE WHEN type = 'screen' THEN name ELSE {title} END",
                "page_name": "CASE WHEN type = 'page' THEN name END",
                "$browser": browser(agent),
                "$browser_version": browser_version(agent),
            },
            "spread": ["properties"],
        },
        columns={"context": "variant", "properties": "variant",
                 **dict.fromkeys(("event", "name", "userId", "anonymousId"), "string")},
        internal="type NOT IN ('track', 'page', 'screen')",  # identify, group and alias calls are not events
    )


def segment_warehouse() -> Spec:
    def column(name: str) -> str:
        return "context_" + "".join(f"_{c.lower()}" if c.isupper() else c for c in name).replace(".", "_")

    context = {name: column(path) for name, path in SEGMENT_CONTEXT.items()}
    agent = column("userAgent")
    return Spec(
        mapping={
            "event": "event_text",  # `event` is its snake_case form; a pages or screens table has neither
            "time": "timestamp",
            "user_id": "user_id",
            "device_id": "anonymous_id",
            "insert_id": "id",
            "properties": {**context, "current_page_title": column("page.title"), "$browser": browser(agent),
                           "$browser_version": browser_version(agent)},
            "include_columns": "*",  # a tracks table's other columns are the event's properties
            "exclude_columns": ["id", "event_text", "timestamp", *SEGMENT_WAREHOUSE_COLUMNS, "context_*"],
        },
        columns={**dict.fromkeys([*context.values(), agent, column("page.title")], "string"),
                 **{context[name]: type_ for name, type_ in SEGMENT_TYPES.items()},
                 **SEGMENT_WAREHOUSE_COLUMNS},
    )


# --- PostHog: batch exports (Parquet: properties as a JSON string; JSON lines: as an object) ------------

POSTHOG_RENAMED = {  # PostHog's property -> Mixpanel's
    "$geoip_city_name": "$city", "$geoip_subdivision_1_name": "$region", "$geoip_country_code": "mp_country_code",
    "$app_version": "$app_version_string", "$app_build": "$app_build_number",
    "$device_manufacturer": "$manufacturer", "$device_model": "$model", "$lib": "mp_lib",
    "$screen_name": "current_page_title",
}
POSTHOG_NOT_SENT = ("$set", "$set_once", "$ip")  # person updates carried by events; the client's IP address


def posthog(kind: str, options: dict[str, Any]) -> Spec:
    def prop(name: str) -> str:
        return variant_field("properties", f"$.{name}")

    if kind == "people":  # the persons model: one row per distinct_id, with the person's latest properties
        renamed = {**{k: v for k, v in POSTHOG_RENAMED.items() if k.startswith("$geoip")},
                   "$geoip_country_code": "$country_code", "email": "$email", "name": "$name"}
        return Spec(mapping={"distinct_id": "distinct_id",
                             "set": {**{target: prop(name) for name, target in renamed.items()},
                                     **dict.fromkeys(renamed)},
                             "spread": ["properties"]},
                    columns={"properties": "variant", "is_deleted": "boolean"},
                    keep="NOT coalesce(is_deleted, false)")
    device = prop("$device_id")
    return Spec(
        mapping={
            "event": "CASE event WHEN '$pageview' THEN '$mp_web_page_view' WHEN '$screen' THEN '$mp_page_view' "
                     "ELSE event END",
            "time": "timestamp",
            "device_id": device,
            # posthog-js identifies a user by giving the events a distinct_id other than the device's
            "user_id": f"CASE WHEN distinct_id <> coalesce({device}, '') THEN distinct_id END",
            "insert_id": "uuid",
            "properties": {
                **{target: prop(name) for name, target in POSTHOG_RENAMED.items()},
                "$os": f"coalesce({prop('$os')}, {prop('$os_name')})",  # web and mobile SDKs name it apart
                **dict.fromkeys([*POSTHOG_RENAMED, "$os_name", *POSTHOG_NOT_SENT]),
            },
            "spread": ["properties"],
        },
        columns={"properties": "variant"},
        internal="event IN ('$identify', '$create_alias', '$merge_dangerously', '$groupidentify', '$set')",
    )


# --- Mixpanel: a raw event export (JSON lines) or an Engage profile export, into another project ---------

# Set by Mixpanel as it ingests an event: a new import sets them afresh
MIXPANEL_EXPORT_ONLY = ("mp_processing_time_ms", "$mp_api_timestamp_ms", "$mp_api_endpoint", "$import",
                        "$mp_event_size")


def mixpanel(kind: str, options: dict[str, Any]) -> Spec:
    if kind == "people":
        return Spec(mapping={"distinct_id": "`$distinct_id`", "spread": ["`$properties`"],
                             "set": {"$last_seen": None}},  # Mixpanel's docs: never set by hand
                    columns={"$properties": "variant"})

    def prop(name: str, type_: str = "string") -> str:
        return variant_field("properties", f"$.{name}", type_)

    zone = options["project_timezone"]  # projects created before 2023 export their local wall-clock time
    timing: dict[str, Any] = {"time": prop("time", "double"), "time_unit": "s"} if zone == "UTC" else {
        "time": f"convert_timezone('{zone}', 'UTC', timestampadd(SECOND, {prop('time', 'bigint')}, "
                "TIMESTAMP_NTZ'1970-01-01 00:00:00'))"}
    return Spec(
        mapping={
            "event": "event",
            **timing,
            "distinct_id": prop("distinct_id"),
            "device_id": prop("$device_id"),
            "user_id": prop("$user_id"),
            "insert_id": prop("$insert_id"),
            "properties": dict.fromkeys(MIXPANEL_EXPORT_ONLY),
            "spread": ["properties"],
        },
        columns={"properties": "variant"},
        internal="event IN ('$identify', '$merge', '$create_alias')",  # Original ID Merge's own events
    )


PRESETS = {
    "amplitude": Preset(amplitude, kinds=("events", "people")),
    "segment": Preset(segment, kinds=("events",), options={"shape": "s3"}, choices={"shape": ("s3", "warehouse")}),
    "ga4": Preset(ga4, kinds=("events",)),
    "posthog": Preset(posthog, kinds=("events", "people")),
    "mixpanel": Preset(mixpanel, kinds=("events", "people"), options={"project_timezone": "UTC"}),
}


def expand_preset(mapping: dict[str, Any], kind: str) -> dict[str, Any]:
    """The raw mapping (as read from the config) with `mapping.preset` filled in under the user's keys.

    Expanding an expanded mapping gives it back unchanged, so a run's saved config reads the same on --resume.
    """
    name, preset = find_preset(mapping.get("preset"), kind)
    options = preset_options(name, preset, mapping.get("preset_options"))
    merged = dict(preset.build(kind, options).mapping)
    for key, value in mapping.items():
        base = merged.get(key)
        merged[key] = {**base, **value} if key in MERGED_KEYS and isinstance(base, dict) and isinstance(
            value, dict) else value
    return {**merged, "preset_options": options}


def find_preset(name: Any, kind: str) -> tuple[str, Preset]:
    preset = PRESETS.get(name) if isinstance(name, str) else None
    if preset is None:
        raise ConfigError(f"mapping.preset must be one of {', '.join(PRESETS)}, got {name!r}")
    if kind not in preset.kinds:
        raise ConfigError(f"mapping.preset: {name} has no mapping for job.kind: {kind} "
                          f"(it has {', '.join(preset.kinds)})")
    return name, preset


def preset_options(name: str, preset: Preset, given: Any) -> dict[str, Any]:
    """The preset's options with the user's values, each checked."""
    defaults = {**COMMON_OPTIONS, **preset.options}
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise ConfigError("mapping.preset_options must be a mapping")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown key mapping.preset_options.{unknown[0]} (the {name} preset's options: "
                          f"{', '.join(sorted(defaults))})")
    options = {**defaults, **given}
    for key, value in options.items():
        if type(value) is not type(defaults[key]):
            raise ConfigError(f"mapping.preset_options.{key} must be {type(defaults[key]).__name__}, got {value!r}")
        if key in preset.choices and value not in preset.choices[key]:
            raise ConfigError(f"mapping.preset_options.{key} must be one of {', '.join(preset.choices[key])}, "
                              f"got {value!r}")
    if "project_timezone" in options:
        try:
            zoneinfo.ZoneInfo(options["project_timezone"])
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError("mapping.preset_options.project_timezone must be a time zone such as "
                              f"America/Los_Angeles, got {options['project_timezone']!r}") from None
    return options


def preset_spec(config: Config) -> Spec | None:
    """The Spec of the config's preset, or None without one."""
    mapping = config.mapping
    if isinstance(mapping, LookupTableMappingConfig) or mapping.preset is None:
        return None
    return PRESETS[mapping.preset].build(config.job.kind, mapping.preset_options)


def prepare_source(config: Config) -> Callable[[DataFrame], DataFrame]:
    """A transform that readies the source for the config's preset (none: the source as it is).

    The vendor's object columns are read as VARIANT and the columns an export may lack are added as
    nulls; a people preset keeps the rows that are profiles (each user's latest, where it says so);
    with preset_options.skip_internal_events the vendor's bookkeeping events are left out, and logged.
    """
    spec = preset_spec(config)
    if spec is None:
        return lambda df: df
    key = f"mapping.preset ({config.mapping.preset})"

    def apply(df: DataFrame) -> DataFrame:
        df = with_preset_columns(df, spec.columns)
        if spec.keep:
            df = df.filter(analysed_expr(df, spec.keep, key))
        if spec.internal and config.job.kind == "events" and config.mapping.preset_options["skip_internal_events"]:
            log.info("mapping.preset_options.skip_internal_events: leaving out the rows where %s", spec.internal)
            df = df.filter(~F.coalesce(analysed_expr(df, spec.internal, key), F.lit(False)))
        if spec.latest:
            df = latest_rows(df, *spec.latest, key=key)
        return df

    return apply


def with_preset_columns(df: DataFrame, columns: dict[str, str]) -> DataFrame:
    present = {c.lower(): c for c in df.columns}  # Spark matches column names case-insensitively
    for name, type_ in columns.items():
        actual = present.get(name.lower())
        if actual is None:
            df = df.withColumn(name, F.lit(None).cast(type_))
        elif type_ == "variant":
            df = df.withColumn(actual, as_variant(column_named(actual), df.schema[actual].dataType))
    return df


def as_variant(column: Column, dtype: T.DataType) -> Column:
    """An object however it landed: a JSON string (Parquet, warehouses), a struct or map (Spark's JSON reader)."""
    if isinstance(dtype, T.VariantType):
        return column
    if isinstance(dtype, T.StringType):
        return F.try_parse_json(column)  # not JSON (or a repeated key): null
    if isinstance(dtype, (T.StructType, T.MapType, T.ArrayType)):
        return F.to_variant_object(column)
    return column.cast("variant")


LATEST = "__mp_spark_latest"


def latest_rows(df: DataFrame, user: str, ordering: tuple[str, ...], *, key: str) -> DataFrame:
    """One row per user (rows without one are not profiles): the latest by `ordering`, ties broken by its
    later expressions, so reruns pick the same row."""
    user_column = analysed_expr(df, user, key)
    window = Window.partitionBy(user_column).orderBy(*[analysed_expr(df, o, key).desc_nulls_last() for o in ordering])
    ranked = df.filter(user_column.isNotNull()).withColumn(LATEST, F.row_number().over(window))
    return ranked.filter(F.col(LATEST) == 1).drop(LATEST)


def render_mapping(mapping: MappingConfig | ProfileMappingConfig | LookupTableMappingConfig) -> str:
    """For --dry-run: the mapping a preset gave, as YAML a user can copy into the config and edit; "" without one."""
    if isinstance(mapping, LookupTableMappingConfig) or mapping.preset is None:
        return ""
    shown = {f.name: getattr(mapping, f.name) for f in dataclasses.fields(mapping)
             if f.name != "kind" and getattr(mapping, f.name) != default_of(f)}
    text = yaml.safe_dump({"mapping": shown}, sort_keys=False, allow_unicode=True, width=10_000)
    kind = getattr(mapping, "kind", "events")
    spec = PRESETS[mapping.preset].build(kind, mapping.preset_options)
    notes = [f"the {mapping.preset} preset reads {', '.join(n for n, t in spec.columns.items() if t == 'variant')} "
             "as VARIANT, and the columns it reads that the source lacks as null"] if spec.columns else []
    if spec.keep:
        notes.append(f"only the rows where {spec.keep} are profiles")
    if spec.latest:
        notes.append(f"one profile per {spec.latest[0]}: its latest row by {', '.join(spec.latest[1])}")
    if spec.internal and kind == "events":
        skipped = mapping.preset_options["skip_internal_events"]
        notes.append(("left out" if skipped else "sent (preset_options.skip_internal_events: true leaves them out)")
                     + f": the rows where {spec.internal}")
    return f"mapping from preset {mapping.preset} (your mapping.* keys override it):\n{text}" + "".join(
        f"# {note}\n" for note in notes)


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
