"""Job configuration: YAML (or JSON) text plus `--set` overrides, parsed into frozen dataclasses.

Everything is validated here, on the driver, before Spark reads a row or a request is made.
Secrets never live in the file: they come from the environment (see `credentials_from_env`).
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlparse

import yaml

REGION_HOSTS = {
    "us": "https://api.mixpanel.com",
    "eu": "https://api-eu.mixpanel.com",
    "in": "https://api-in.mixpanel.com",
}
SOURCE_FORMATS = ("parquet", "delta", "json")
TIME_UNITS = ("s", "ms", "us")
NULL_DISTINCT_ID = ("invalid", "empty")
JOB_ORDERS = ("any", "recent_first")
JOB_KINDS = ("events", "people", "groups", "lookup_table")
JOB_MODES = ("backfill", "incremental")
TRIGGERS = ("available_now", "continuous")
# The keys that only job.mode incremental takes, in the job and source sections
STREAM_JOB_KEYS = ("trigger", "trigger_interval_s", "checkpoint_path", "max_files_per_batch", "max_bytes_per_batch")
STREAM_SOURCE_KEYS = ("change_feed", "skip_change_commits", "starting_version", "starting_timestamp")
# Delta's maxBytesPerTrigger: whole bytes, or kibi-, mebi-, gibi-, tebi- or pebibytes (512m, 1g, 2tb)
BYTE_SIZE = re.compile(r"^\s*\d+\s*([kmgtp]b?|b)?\s*$", re.IGNORECASE)
MAX_EVENTS_PER_REQUEST = 2000  # /import cap per request
MAX_REQUEST_BYTES = 10_000_000  # /import cap on the uncompressed body


class ConfigError(ValueError):
    """A problem with the configuration or the environment; the message names the key or variable."""


@dataclass(frozen=True)
class SourceConfig:
    format: str
    path: str | None = None
    table: str | None = None
    where: str | None = None
    version: int | None = None
    timestamp: str | None = None
    schema: str | None = None
    # job.mode incremental only: read Delta's change data feed, or pass over commits that change or
    # delete rows (a stream of the rows stops at them), and where a Delta stream starts
    change_feed: bool = False
    skip_change_commits: bool = False
    starting_version: int | None = None
    starting_timestamp: str | None = None

    def __post_init__(self) -> None:
        _require_choice("source.format", self.format, SOURCE_FORMATS)
        if (self.path is None) == (self.table is None):
            raise ConfigError("give exactly one of source.path or source.table")
        if self.format != "delta" and (self.version is not None or self.timestamp is not None):
            raise ConfigError("source.version and source.timestamp (time travel) need source.format: delta")
        if self.version is not None and self.timestamp is not None:
            raise ConfigError("give at most one of source.version or source.timestamp")
        if self.schema is not None and self.format == "delta":
            raise ConfigError("source.schema is for files (json, parquet): a Delta table has its own")
        stream_keys = non_default(self, STREAM_SOURCE_KEYS)
        if self.format != "delta" and stream_keys:
            raise ConfigError(f"source.{stream_keys[0]} needs source.format: delta")
        if self.change_feed and self.skip_change_commits:
            raise ConfigError("source.skip_change_commits is for a stream of the table's rows; its change feed "
                              "(source.change_feed) has every change already")
        if self.starting_version is not None and self.starting_timestamp is not None:
            raise ConfigError("give at most one of source.starting_version or source.starting_timestamp")
        for key in ("timestamp", "starting_timestamp"):  # Delta reads them; a typo should not wait for Spark
            if getattr(self, key) is not None:
                iso_to_epoch_ms(f"source.{key}", getattr(self, key))


@dataclass(frozen=True)
class MappingConfig:
    event: str
    time: str
    distinct_id: str | None = None
    device_id: str | None = None  # Simplified ID Merge: sent as $device_id
    user_id: str | None = None  # ... and $user_id
    null_distinct_id: str = "invalid"  # a row with no identity at all: set aside, or sent with distinct_id ""
    ip: str | None = None  # without it every event carries ip "0", so Mixpanel does not geolocate the cluster
    insert_id: str | None = None
    time_unit: str | None = None
    properties: dict[str, str | None] = field(default_factory=dict)  # None: never send a property of this name
    spread: list[str] = field(default_factory=list)  # expressions whose entries become properties
    include_columns: list[str] | str = field(default_factory=list)
    exclude_columns: list[str] = field(default_factory=list)  # names, or patterns such as context_*
    preset: str | None = None  # a vendor's mapping that the keys above override (mp_spark/presets.py)
    preset_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (self.distinct_id or self.device_id or self.user_id):
            raise ConfigError("missing required key mapping.distinct_id (or mapping.user_id / mapping.device_id)")
        _require_choice("mapping.null_distinct_id", self.null_distinct_id, NULL_DISTINCT_ID)
        if self.time_unit is not None:
            _require_choice("mapping.time_unit", self.time_unit, TIME_UNITS)
        if isinstance(self.include_columns, str) and self.include_columns != "*":
            raise ConfigError('mapping.include_columns must be "*" or a list of column names')
        _require_expressions("mapping.properties", self.properties, allow_null=True)
        _require_spread(self.spread)


@dataclass(frozen=True)
class ProfileMappingConfig:
    """job.kind people (profiles by distinct_id) or groups (by group_key and group_id).

    Each source row becomes one update per operation given: $set, $set_once and $union take
    property name -> Spark SQL expression ($union's must yield a list); $unset takes names.
    """

    kind: str = "people"  # set from job.kind
    distinct_id: str | None = None
    group_key: str | None = None  # a constant such as "company_id": the group key set up in Mixpanel
    group_id: str | None = None
    set: dict[str, str | None] = field(default_factory=dict)  # None: never set a property of this name
    set_once: dict[str, str] = field(default_factory=dict)
    union: dict[str, str] = field(default_factory=dict)
    unset: list[str] = field(default_factory=list)
    spread: list[str] = field(default_factory=list)  # expressions whose entries are added to $set
    ip: str | None = None  # people only: without it, updates carry no $ip and are sent with ip=0
    ignore_time: bool = True  # people: a backfill must not move $last_seen
    preset: str | None = None  # as for events: a vendor's profile mapping (mp_spark/presets.py)
    preset_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind == "people":
            if not self.distinct_id:
                raise ConfigError("missing required key mapping.distinct_id (job.kind: people)")
            if self.group_key or self.group_id:
                raise ConfigError("mapping.group_key and mapping.group_id are for job.kind: groups")
        else:
            if not (self.group_key and self.group_id):
                raise ConfigError("job.kind: groups needs mapping.group_key (a constant) and mapping.group_id")
            if self.distinct_id or self.ip:
                raise ConfigError("mapping.distinct_id and mapping.ip are for job.kind: people")
        if not self.operations:
            raise ConfigError("give at least one of mapping.set, mapping.set_once, mapping.union, mapping.unset "
                              "(or mapping.spread)")
        _require_expressions("mapping.set", self.set, allow_null=True)
        _require_expressions("mapping.set_once", self.set_once)
        _require_expressions("mapping.union", self.union)
        _require_spread(self.spread)

    @property
    def operations(self) -> list[str]:
        """The operations this mapping sends, in the order each row's updates are sent."""
        sets = any(e is not None for e in self.set.values()) or bool(self.spread)
        return [name for name in ("set", "set_once", "union", "unset") if getattr(self, name) or
                (name == "set" and sets)]


@dataclass(frozen=True)
class LookupTableMappingConfig:
    """job.kind lookup_table: the source replaces Mixpanel lookup table `lookup_table_id`."""

    lookup_table_id: str
    key: str  # the key column, sent first; its values must be unique and non-empty
    columns: dict[str, str] = field(default_factory=dict)  # name -> expression; empty: every other column

    def __post_init__(self) -> None:
        for name, expression in self.columns.items():
            if not name or not isinstance(expression, str) or not expression.strip():
                raise ConfigError(f"mapping.columns.{name}: needs a non-empty Spark SQL expression")


@dataclass(frozen=True)
class MixpanelConfig:
    project_id: str | None = None
    region: str = "us"
    api_host: str | None = None
    max_batch_events: int = MAX_EVENTS_PER_REQUEST
    max_batch_bytes: int = 2 * 1024 * 1024  # the safest of the limits Mixpanel's /import documents
    gzip_level: int = 6
    timeout_s: float = 30.0
    max_attempts: int = 8
    backoff_initial_s: float = 2.0  # Mixpanel's advice: 2 s doubling to 60 s, plus 1-5 s of jitter
    backoff_max_s: float = 60.0
    jitter_min_s: float = 1.0
    jitter_max_s: float = 5.0
    max_in_flight: int = 16  # requests in flight across the whole job (Mixpanel: 10-20 clients do best)
    pacing: bool = True  # slow down on 429 rather than only back off
    rate_limit_events_per_second: float = 30_000  # the project's limit: Mixpanel's default, unless raised
    max_events_per_second: float | None = None  # optional hard cap for the whole job
    # Send one record from the driver before the executors send: wrong credentials cost one request
    check_credentials: bool = True

    def __post_init__(self) -> None:
        _require_choice("mixpanel.region", self.region, tuple(REGION_HOSTS))
        if self.api_host is not None and not self.api_host.startswith(("https://", "http://")):
            raise ConfigError(f"mixpanel.api_host must be a full URL such as https://host, got {self.api_host!r}")
        _require_range("mixpanel.max_batch_events", self.max_batch_events, 1, MAX_EVENTS_PER_REQUEST)
        _require_range("mixpanel.max_batch_bytes", self.max_batch_bytes, 1024, MAX_REQUEST_BYTES)
        _require_range("mixpanel.gzip_level", self.gzip_level, 0, 9)
        _require_range("mixpanel.max_attempts", self.max_attempts, 1, 100)
        _require_range("mixpanel.max_in_flight", self.max_in_flight, 1, 1000)
        _require_range("mixpanel.rate_limit_events_per_second", self.rate_limit_events_per_second, 1, 10_000_000)
        if self.max_events_per_second is not None:
            _require_range("mixpanel.max_events_per_second", self.max_events_per_second, 1, 10_000_000)
        _require_range("mixpanel.timeout_s", self.timeout_s, 0.1, 3600)  # an HTTP client cannot wait 0 s
        for key in ("backoff_initial_s", "backoff_max_s", "jitter_min_s", "jitter_max_s"):
            _require_range(f"mixpanel.{key}", getattr(self, key), 0, 3600)
        if self.jitter_min_s > self.jitter_max_s:
            raise ConfigError("mixpanel.jitter_min_s must not exceed mixpanel.jitter_max_s")

    @property
    def base_url(self) -> str:
        return (self.api_host or REGION_HOSTS[self.region]).rstrip("/")


@dataclass(frozen=True)
class JobConfig:
    records_per_partition: int = 200_000  # Mixpanel's advice for one unit of work (~200 MB of JSON)
    results_path: str | None = None
    time_from: str | None = None  # ISO 8601 date or timestamp, UTC unless it names a zone: from here on ...
    time_to: str | None = None  # ... and before this; on the mapped time
    kind: str = "events"  # or "people" / "groups": user or group profile updates
    order: str = "any"  # "recent_first": the last `recent_days` first, as Mixpanel advises
    recent_days: int = 30
    # Send in phases of this many days of event time, newest first, each a Spark job whose outcomes are
    # kept when it ends: a long run on a cluster then loses at most a phase when stopped (mp_spark/phases.py).
    phase_days: int | None = None
    progress_interval_s: float = 10.0  # how often the driver logs progress and records finished partitions
    # job.mode incremental: read the source as a stream, and send each micro-batch as a backfill is sent
    mode: str = "backfill"
    trigger: str = "available_now"  # everything new, then stop; or "continuous": until stopped
    trigger_interval_s: float = 60.0  # continuous: how often to look for new data
    checkpoint_path: str | None = None  # the stream's state; default: see mp_spark/incremental.py
    max_files_per_batch: int | None = None  # caps a micro-batch, so that a first run is paced batch by batch
    max_bytes_per_batch: str | None = None  # Delta only: such as "1g" (a soft cap: whole files)

    def __post_init__(self) -> None:
        _require_range("job.records_per_partition", self.records_per_partition, 1, 100_000_000)
        _require_choice("job.mode", self.mode, JOB_MODES)
        _require_choice("job.trigger", self.trigger, TRIGGERS)
        _require_range("job.trigger_interval_s", self.trigger_interval_s, 0.1, 86_400)
        if self.max_files_per_batch is not None:
            _require_range("job.max_files_per_batch", self.max_files_per_batch, 1, 10_000_000)
        if self.mode == "backfill":
            stream_keys = non_default(self, STREAM_JOB_KEYS)
            if stream_keys:
                raise ConfigError(f"job.{stream_keys[0]} is for job.mode: incremental")
        elif self.kind == "lookup_table":
            raise ConfigError("job.mode: incremental is for events and profiles; a lookup table is replaced "
                              "whole at every run (job.mode: backfill)")
        elif self.order != "any" or self.phase_days is not None:
            key = "job.order" if self.order != "any" else "job.phase_days"
            raise ConfigError(f"{key} is for job.mode: backfill (an incremental run sends what is new)")
        _require_range("job.progress_interval_s", self.progress_interval_s, 0.1, 3600)
        _require_choice("job.order", self.order, JOB_ORDERS)
        _require_choice("job.kind", self.kind, JOB_KINDS)
        if self.kind != "events" and (self.order != "any" or self.time_from or self.time_to or self.phase_days):
            raise ConfigError("job.order, job.phase_days, job.time_from and job.time_to are for job.kind: events "
                              "(profile updates have no time)")
        _require_range("job.recent_days", self.recent_days, 1, 36_500)
        if self.order != "recent_first" and non_default(self, ["recent_days"]):
            raise ConfigError("job.recent_days is for job.order: recent_first")
        if self.trigger != "continuous" and non_default(self, ["trigger_interval_s"]):
            raise ConfigError("job.trigger_interval_s is for job.trigger: continuous (available_now stops "
                              "when the source has nothing new)")
        if self.max_bytes_per_batch is not None and not BYTE_SIZE.match(str(self.max_bytes_per_batch)):
            raise ConfigError("job.max_bytes_per_batch must be a whole number of bytes with an optional unit, "
                              f"such as 512m or 1g, got {self.max_bytes_per_batch!r}")
        if self.phase_days is not None:
            _require_range("job.phase_days", self.phase_days, 1, 36_500)
        time_from_ms, time_to_ms = self.time_from_ms, self.time_to_ms  # parsed here to fail early
        if time_from_ms is not None and time_to_ms is not None and time_from_ms >= time_to_ms:
            raise ConfigError(f"job.time_from ({self.time_from}) must be before job.time_to ({self.time_to})")

    @property
    def time_from_ms(self) -> int | None:
        return iso_to_epoch_ms("job.time_from", self.time_from) if self.time_from else None

    @property
    def time_to_ms(self) -> int | None:
        return iso_to_epoch_ms("job.time_to", self.time_to) if self.time_to else None


@dataclass(frozen=True)
class Config:
    source: SourceConfig
    mapping: MappingConfig | ProfileMappingConfig | LookupTableMappingConfig  # by job.kind
    mixpanel: MixpanelConfig = field(default_factory=MixpanelConfig)
    job: JobConfig = field(default_factory=JobConfig)

    def __post_init__(self) -> None:
        incremental = self.job.mode == "incremental"
        stream_keys = non_default(self.source, STREAM_SOURCE_KEYS)
        if stream_keys and not incremental:
            raise ConfigError(f"source.{stream_keys[0]} is for job.mode: incremental")
        if incremental and (self.source.version is not None or self.source.timestamp is not None):
            raise ConfigError("source.version and source.timestamp read one version of a table (job.mode: "
                              "backfill); an incremental run starts at source.starting_version or "
                              "source.starting_timestamp")
        if self.job.max_bytes_per_batch is not None and self.source.format != "delta":
            raise ConfigError("job.max_bytes_per_batch needs source.format: delta (files: job.max_files_per_batch)")

    @property
    def profiles(self) -> bool:
        return self.job.kind in ("people", "groups")

    @property
    def incremental(self) -> bool:
        return self.job.mode == "incremental"


@dataclass(frozen=True)
class Credentials:
    """HTTP Basic credentials for /import. repr=False keeps them out of logs and tracebacks."""

    kind: str  # "service_account" or "project_token"
    username: str = field(repr=False)
    password: str = field(repr=False)

    def authorization_header(self) -> str:
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


def non_default(section: Any, names: Sequence[str]) -> list[str]:
    """Which of a config section's keys `names` are set to something else than their default."""
    return [f.name for f in dataclasses.fields(section) if f.name in names and getattr(section, f.name) != f.default]


def with_defaults(section: Any, names: Sequence[str]) -> Any:
    """The config section with its keys `names` back at their defaults."""
    return dataclasses.replace(section, **{f.name: f.default for f in dataclasses.fields(section) if f.name in names})


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error: plain YAML keeps the last
    one, so a second `job:` section would silently drop the first one's time window."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`, whose keys a section may override
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"the config gives {key!r} twice in the same section (again on line "
                                  f"{key_node.start_mark.line + 1}): YAML would keep only the last")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_config(text: str, overrides: Sequence[str] = ()) -> Config:
    """Parse YAML or JSON config text, apply `dotted.key=value` overrides, and validate."""
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader) or {}  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        raise ConfigError(f"config is not valid YAML or JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("config must be a mapping with the sections source, mapping, mixpanel, job")
    for override in overrides:
        _apply_override(data, override)
    job = _build(JobConfig, data.get("job", {}), prefix="job.")
    mapping = data.get("mapping")
    if isinstance(mapping, dict) and mapping.get("preset") is not None:
        from mp_spark.presets import expand_preset  # here, not at the top: presets.py needs ConfigError

        mapping = expand_preset(mapping, job.kind)
    if job.kind in ("people", "groups") and isinstance(mapping, dict):
        mapping = {**mapping, "kind": job.kind}
    mapping_type = {"events": MappingConfig, "lookup_table": LookupTableMappingConfig}.get(job.kind,
                                                                                           ProfileMappingConfig)
    if isinstance(mapping, dict):
        _require_kind_of_mapping(mapping, mapping_type, job.kind)
    return _build(Config, {**data, "mapping": mapping}, prefix="", field_types={"mapping": mapping_type})


def _require_kind_of_mapping(mapping: dict[str, Any], mapping_type: type, kind: str) -> None:
    """A mapping written for another job.kind (profile operations under events, say) is told so, rather
    than that its first key is unknown."""
    known = {f.name for f in dataclasses.fields(mapping_type)}
    others = (("people or groups", ProfileMappingConfig), ("lookup_table", LookupTableMappingConfig),
              ("events", MappingConfig))
    for other_kind, other_type in others:
        other_keys = {f.name for f in dataclasses.fields(other_type)} - known - {"kind"}
        found = sorted(set(mapping) & other_keys)
        if other_type is not mapping_type and found:
            raise ConfigError(f"mapping.{found[0]} is for job.kind: {other_kind}, and this config's job.kind is "
                              f"{kind}: set job.kind, or leave the key out")


def absolute_local(path: str | None) -> str | None:
    """A path without a scheme made absolute from the working directory (a URL as it is)."""
    return os.path.abspath(path) if path and not urlparse(path).scheme else path


def with_absolute_paths(config: Config) -> Config:
    """`config` with its relative local paths made absolute: for a Spark Connect server, which would
    otherwise resolve them from its own working directory."""
    return dataclasses.replace(
        config,
        source=dataclasses.replace(config.source, path=absolute_local(config.source.path)),
        job=dataclasses.replace(config.job, results_path=absolute_local(config.job.results_path),
                                checkpoint_path=absolute_local(config.job.checkpoint_path)),
    )


def credentials_from_env(environ: Mapping[str, str], mixpanel: MixpanelConfig, kind: str = "events"
                         ) -> Credentials:
    """Pick the credentials for `job.kind` from the environment, or say exactly which variable is missing.

    A service account (user and secret) if either is given, else a project token. Profile updates
    (job.kind people or groups) carry the project token inside each update: only it will do.
    Lookup tables take only a service account. (On Databricks, a cluster's environment variables
    can be `{{secrets/<scope>/<key>}}`.)
    """
    user_name, secret_name, token_name = "MP_SERVICE_ACCOUNT_USER", "MP_SERVICE_ACCOUNT_SECRET", "MP_PROJECT_TOKEN"
    # Stripped: a secret kept in a file or a secret store often ends in a newline, which Mixpanel refuses.
    user, secret, token = (environ.get(name, "").strip() for name in (user_name, secret_name, token_name))
    if kind == "lookup_table" and not (user and secret):
        raise ConfigError(f"job.kind: lookup_table needs a service account: set {user_name} and {secret_name} "
                          "(with mixpanel.project_id)")
    if kind in ("people", "groups"):
        if not token:
            raise ConfigError(f"job.kind: {kind} sends the project token inside each update: set {token_name}")
        return Credentials("project_token", token, "")
    if user or secret:
        if not user:
            raise ConfigError(f"{secret_name} is set but {user_name} is not")
        if not secret:
            raise ConfigError(f"{user_name} is set but {secret_name} is not")
        if not mixpanel.project_id:
            raise ConfigError(f"mixpanel.project_id is required with a service account ({user_name})")
        return Credentials("service_account", user, secret)
    if token:
        return Credentials("project_token", token, "")
    raise ConfigError(
        f"no Mixpanel credentials: set {user_name} and {secret_name} (with mixpanel.project_id), or {token_name}"
    )


UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def iso_to_epoch_ms(key: str, text: str) -> int:
    """An ISO 8601 date or timestamp as epoch milliseconds; UTC when it names no zone."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{key} must be an ISO 8601 date or timestamp such as 2024-01-31, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    # Integer arithmetic: int(moment.timestamp() * 1000) is 1 ms short for some times (float rounding).
    return (moment - UNIX_EPOCH) // timedelta(milliseconds=1)


def utc_text(key: str, text: str) -> str:
    """An ISO 8601 date or timestamp (UTC when it names no zone) as an ISO text that says UTC: Delta
    reads a zone-less one in the Spark session's time zone."""
    moment = UNIX_EPOCH + timedelta(milliseconds=iso_to_epoch_ms(key, text))
    return moment.isoformat(timespec="milliseconds")


def _apply_override(data: dict[str, Any], override: str) -> None:
    key, sep, raw_value = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects dotted.key=value, got {override!r}")
    *parents, leaf = key.strip().split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {part} is not a section")
    try:
        node[leaf] = yaml.safe_load(raw_value) if raw_value.strip() else raw_value
    except yaml.YAMLError:
        node[leaf] = raw_value


def _build(cls: type, data: Any, prefix: str, field_types: Mapping[str, type] | None = None) -> Any:
    """Build dataclass `cls` from a dict, naming the dotted key of anything unknown, missing or mistyped."""
    if data is None:  # a section whose keys are all commented out
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping")
    hints = {**typing.get_type_hints(cls), **(field_types or {})}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]} (known keys: {', '.join(sorted(fields))})")
    values = {}
    for name, f in fields.items():
        key = prefix + name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing required key {key}")
            continue
        values[name] = _coerce(hints[name], data[name], key)
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix.rstrip('.')}: {exc}") from None


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        origin = typing.get_origin(option) or option
        if origin is bool and isinstance(value, bool):
            return value
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is str and isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)  # ids such as project_id are often written as numbers
        if origin is str and isinstance(value, date):
            return value.isoformat()  # YAML reads an unquoted 2024-01-31 as a date
        if origin is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        if origin is dict and isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
    expected = " or ".join(getattr(o, "__name__", str(o)) for o in options if o is not type(None))
    raise ConfigError(f"{key} must be {expected}, got {value!r}")


def _require_expressions(key: str, expressions: Mapping[str, Any], *, allow_null: bool = False) -> None:
    for name, expression in expressions.items():
        if not name or not (_is_expression(expression) or (allow_null and expression is None)):
            raise ConfigError(f"{key}.{name}: needs a non-empty Spark SQL expression"
                              + (" (or null: not sent)" if allow_null else ""))


def _require_spread(expressions: list[str]) -> None:
    for i, expression in enumerate(expressions):
        if not _is_expression(expression):
            raise ConfigError(f"mapping.spread[{i}]: needs a non-empty Spark SQL expression")


def _is_expression(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _require_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}")


def _require_range(key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{key} must be between {low} and {high}, got {value}")
