import re
import time
from pathlib import Path

import pytest
import yaml

from mp_spark.cli import build_parser, credentials_for, read_here
from mp_spark.config import ConfigError, Credentials, UniqueKeyLoader, credentials_from_env, parse_config
from mp_spark.incremental import as_backfill, checkpoint_path

MINIMAL = """
source: {format: parquet, path: /data/events}
mapping: {event: name, time: ts, distinct_id: user_id}
"""


def test_parse_config_fills_defaults() -> None:
    config = parse_config(MINIMAL)
    assert config.source.path == "/data/events"
    assert config.mapping.insert_id is None
    assert config.mixpanel.base_url == "https://api.mixpanel.com"
    assert config.mixpanel.max_batch_events == 2000
    assert config.job.records_per_partition == 200_000


def test_parse_config_distinct_id_is_optional_with_simplified_id_merge() -> None:
    config = parse_config("source: {format: parquet, path: x}\nmapping: {event: e, time: t, user_id: u}")
    assert (config.mapping.distinct_id, config.mapping.user_id) == (None, "u")


def test_parse_config_reads_the_time_window_as_utc() -> None:
    job = parse_config(MINIMAL + "job: {time_from: 2024-01-01, time_to: '2024-02-01T00:00:00+01:00'}").job
    assert (job.time_from_ms, job.time_to_ms) == (1_704_067_200_000, 1_706_742_000_000)


def test_parse_config_accepts_json() -> None:
    config = parse_config('{"source": {"format": "json", "path": "x"},'
                          ' "mapping": {"event": "e", "time": "t", "distinct_id": "d"}}')
    assert config.source.format == "json"


def test_parse_config_applies_dotted_overrides_with_yaml_types() -> None:
    config = parse_config(MINIMAL, ["job.records_per_partition=5000", "mixpanel.region=eu",
                                    "mixpanel.api_host=http://127.0.0.1:9/x/"])
    assert config.job.records_per_partition == 5000
    assert config.mixpanel.base_url == "http://127.0.0.1:9/x"


def test_parse_config_numeric_project_id_becomes_string() -> None:
    assert parse_config(MINIMAL + "mixpanel: {project_id: 12345}").mixpanel.project_id == "12345"


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ("job: {records_per_partitions: 5}", "job.records_per_partitions"),
        ("mixpanel: {region: mars}", "mixpanel.region"),
        ("mixpanel: {max_batch_events: 2001}", "mixpanel.max_batch_events"),
        ("mixpanel: {max_batch_bytes: 20000000}", "mixpanel.max_batch_bytes"),
        ("mixpanel: {api_host: api.mixpanel.com}", "mixpanel.api_host"),
        ("mixpanel: {timeout_s: soon}", "mixpanel.timeout_s"),
        ("mapping2: {}", "mapping2"),
        ("job: {time_from: yesterday}", "job.time_from"),
        ("job: {time_from: '2024-02-01', time_to: '2024-01-01'}", "job.time_from"),
        ("job: {order: oldest_first}", "job.order"),
    ],
)
def test_parse_config_names_the_bad_key(extra: str, named: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)):
        parse_config(MINIMAL + extra)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("source: {format: parquet, path: x}\nmapping: {event: e, time: t}", "mapping.distinct_id"),
        ("source: {format: parquet, path: x}\nmapping: {event: e, time: t, distinct_id: d, null_distinct_id: skip}",
         "mapping.null_distinct_id"),
        ("source: {format: csv, path: x}\nmapping: {event: e, time: t, distinct_id: d}", "source.format"),
        ("source: {format: parquet}\nmapping: {event: e, time: t, distinct_id: d}", "source.path"),
        ("source: {format: parquet, path: x, version: 3}\nmapping: {event: e, time: t, distinct_id: d}",
         "source.version"),
        ("source: {format: json, path: x}\nmapping: {event: e, time: t, distinct_id: d, time_unit: h}",
         "mapping.time_unit"),
        ("- a list", "mapping with the sections"),
    ],
)
def test_parse_config_rejects_invalid_sections(text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        parse_config(text)


def test_parse_config_rejects_malformed_override() -> None:
    with pytest.raises(ConfigError, match=r"dotted\.key=value"):
        parse_config(MINIMAL, ["job.records_per_partition"])


def test_credentials_from_env_prefers_service_account() -> None:
    mixpanel = parse_config(MINIMAL + "mixpanel: {project_id: '7'}").mixpanel
    creds = credentials_from_env({"MP_SERVICE_ACCOUNT_USER": "sa", "MP_SERVICE_ACCOUNT_SECRET": "s3cret",
                                  "MP_PROJECT_TOKEN": "tok"}, mixpanel)
    assert creds.kind == "service_account"
    assert creds.authorization_header() == "Basic c2E6czNjcmV0"  # base64("sa:s3cret")


def test_credentials_from_env_token_is_user_with_empty_password() -> None:
    creds = credentials_from_env({"MP_PROJECT_TOKEN": "tok"}, parse_config(MINIMAL).mixpanel)
    assert creds.authorization_header() == "Basic dG9rOg=="  # base64("tok:")


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({}, "MP_PROJECT_TOKEN"),
        ({"MP_SERVICE_ACCOUNT_USER": "sa"}, "MP_SERVICE_ACCOUNT_SECRET"),
        ({"MP_SERVICE_ACCOUNT_SECRET": "s"}, "MP_SERVICE_ACCOUNT_USER"),
        ({"MP_SERVICE_ACCOUNT_USER": "sa", "MP_SERVICE_ACCOUNT_SECRET": "s"}, "mixpanel.project_id"),
    ],
)
def test_credentials_from_env_names_the_missing_variable(environ: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        credentials_from_env(environ, parse_config(MINIMAL).mixpanel)


def test_credentials_never_show_in_repr() -> None:
    assert "s3cret" not in repr(Credentials("service_account", "sa", "s3cret"))


@pytest.mark.parametrize(
    ("name", "kind"),
    [("sample.yaml", "events"), ("backfill.example.yaml", "events"), ("people.example.yaml", "people"),
     ("groups.example.yaml", "groups"), ("incremental.example.yaml", "events")],
)
def test_shipped_configs_are_valid(name: str, kind: str) -> None:
    path = Path(__file__).resolve().parents[1] / "conf" / name
    assert parse_config(path.read_text()).job.kind == kind


PEOPLE = """
source: {format: parquet, path: /data/users}
mapping: {distinct_id: user_id, set: {plan: plan}, unset: [legacy]}
job: {kind: people}
"""


def test_parse_config_takes_a_profile_mapping_for_people_and_groups() -> None:
    config = parse_config(PEOPLE)
    assert config.profiles and config.mapping.operations == ["set", "unset"] and config.mapping.ignore_time
    groups = parse_config(PEOPLE, ["job.kind=groups", "mapping.distinct_id=null", "mapping.group_key=company_id",
                                   "mapping.group_id=company"])
    assert (groups.mapping.kind, groups.mapping.group_key) == ("groups", "company_id")


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["job.kind=lookups"], "job.kind"),
        (["mapping.distinct_id=null"], "mapping.distinct_id"),
        (["mapping.set={}", "mapping.unset=[]"], "mapping.set"),
        (["job.kind=groups"], "mapping.group_key"),
        (["mapping.event=name"], "mapping.event"),  # an events key in a profile mapping
        (["job.time_from=2024-01-01"], "job.time_from"),
    ],
)
def test_profile_config_errors_name_the_key(overrides: list[str], named: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)):
        parse_config(PEOPLE, overrides)


def test_profiles_take_only_the_project_token() -> None:
    mixpanel = parse_config(PEOPLE).mixpanel
    service_account = {"MP_SERVICE_ACCOUNT_USER": "u", "MP_SERVICE_ACCOUNT_SECRET": "s"}
    with pytest.raises(ConfigError, match="MP_PROJECT_TOKEN"):
        credentials_from_env(service_account, mixpanel, "people")
    token = credentials_from_env({**service_account, "MP_PROJECT_TOKEN": "tk"}, mixpanel, "people")
    assert (token.kind, token.username) == ("project_token", "tk")


@pytest.mark.parametrize("zone", ["UTC", "America/Los_Angeles", "Australia/Lord_Howe", "Pacific/Apia"])
@pytest.mark.parametrize(("text", "epoch_ms"), [
    ("2013-03-10T02:30:00", 1_362_882_600_000),  # a wall clock in Los Angeles' DST gap, read as UTC
    ("2011-12-30", 1_325_203_200_000),  # Apia's missing day: midnight UTC
    ("2013-10-06 02:15:00Z", 1_381_025_700_000),  # Lord Howe's 30-minute gap
    ("2013-10-06T07:45:00+05:30", 1_381_025_700_000),
    ("1987-03-08T23:30:55.665Z", 542_244_655_665),  # exact to the millisecond (a float product is 1 ms short)
])
def test_the_time_window_is_exact_utc_whatever_the_process_time_zone(
    monkeypatch: pytest.MonkeyPatch, zone: str, text: str, epoch_ms: int
) -> None:
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        job = parse_config(MINIMAL + f"job: {{time_from: '{text}'}}").job
    finally:
        monkeypatch.undo()
        time.tzset()  # back to the process's zone, for the tests that follow
    assert job.time_from_ms == epoch_ms


@pytest.mark.parametrize(("overrides", "message"), [
    (["job.trigger=continuous"], "job.trigger is for job.mode: incremental"),
    (["job.checkpoint_path=/tmp/cp"], "job.checkpoint_path is for job.mode: incremental"),
    (["source.change_feed=true"], "source.change_feed needs source.format: delta"),
    (["source.format=delta", "source.change_feed=true"], "source.change_feed is for job.mode: incremental"),
    (["source.format=delta", "source.skip_change_commits=true"], "source.skip_change_commits is for job.mode: inc"),
    (["source.format=delta", "job.mode=incremental", "source.change_feed=true", "source.skip_change_commits=true"],
     "its change feed \\(source.change_feed\\) has every change already"),
    (["job.mode=incremental", "job.order=recent_first"], "job.order is for job.mode: backfill"),
    (["job.mode=incremental", "job.phase_days=30"], "job.phase_days is for job.mode: backfill"),
    (["job.mode=incremental", "job.max_bytes_per_batch=1g"], "job.max_bytes_per_batch needs source.format: delta"),
    (["job.mode=incremental", "source.format=delta", "source.version=3"], "source.starting_version"),
    (["job.mode=streaming"], "job.mode must be one of backfill, incremental"),
    (["job.mode=incremental", "job.trigger=once"], "job.trigger must be one of available_now, continuous"),
])
def test_incremental_keys_are_checked_against_the_mode_and_the_source(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(MINIMAL, overrides)


def test_a_lookup_table_cannot_be_incremental() -> None:
    lookup = """
source: {format: parquet, path: /data/plans}
mapping: {lookup_table_id: "abc", key: plan_id}
job: {kind: lookup_table, mode: incremental}
"""
    with pytest.raises(ConfigError, match="a lookup table is replaced whole"):
        parse_config(lookup)


def test_the_default_checkpoint_is_stable_for_a_source_and_changes_with_it() -> None:
    config = parse_config(MINIMAL, ["job.mode=incremental"])
    path = checkpoint_path(config, "s3://bucket/runs/")
    assert path == checkpoint_path(parse_config(MINIMAL, ["job.mode=incremental", "mapping.event='x'"]),
                                   "s3://bucket/runs")  # the mapping may change; the stream keeps its place
    assert re.fullmatch(r"s3://bucket/runs/checkpoints/events-[0-9a-f]{12}", path)
    moved = parse_config(MINIMAL, ["job.mode=incremental", "source.where=id > 3"])
    assert checkpoint_path(moved, "s3://bucket/runs") != path
    for project in (["mixpanel.project_id=222"], ["mixpanel.region=eu"]):  # a test project first, then the real one
        assert checkpoint_path(parse_config(MINIMAL, ["job.mode=incremental", *project]), "s3://bucket/runs") != path
    skipping = parse_config(MINIMAL, ["job.mode=incremental", "source.format=delta", "source.skip_change_commits=true"])
    assert checkpoint_path(skipping, "s3://bucket/runs") == checkpoint_path(  # told to go on, from its place
        parse_config(MINIMAL, ["job.mode=incremental", "source.format=delta"]), "s3://bucket/runs")
    typed = parse_config(MINIMAL, ["job.mode=incremental", "source.schema=id bigint"])
    assert checkpoint_path(typed, "s3://bucket/runs") == path
    assert checkpoint_path(parse_config(MINIMAL, ["job.mode=incremental", "job.checkpoint_path=/cp"]), "x") == "/cp"


def test_a_dry_run_of_an_incremental_config_previews_it_as_a_backfill() -> None:
    config = parse_config(MINIMAL, ["source.format=delta", "job.mode=incremental", "source.change_feed=true",
                                    "job.trigger=continuous", "source.starting_version=4"])
    backfill = as_backfill(config)
    assert backfill.job.mode == "backfill" and backfill.job.trigger == "available_now"
    assert not backfill.source.change_feed and backfill.source.starting_version is None
    assert backfill.mapping == config.mapping


def test_the_command_line_takes_no_abbreviations_so_spark_submits_conf_is_not_read_as_config(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["--config", "job.yaml", "--conf", "spark.executor.memory=4g"])

    assert stopped.value.code == 2
    assert "unrecognized arguments: --conf" in capsys.readouterr().err


@pytest.mark.parametrize(("config", "overrides", "message"), [
    (MINIMAL, ["job.phase_days=0"], "job.phase_days must be between 1 and 36500, got 0"),
    (PEOPLE, ["job.phase_days=30"], "job.phase_days, job.time_from and job.time_to are for job.kind: events"),
])
def test_phases_of_days_are_checked(config: str, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(config, overrides)


def test_a_key_given_twice_is_refused_not_overwritten() -> None:
    two_jobs = MINIMAL + "job: {time_from: 2024-06-20}\njob: {results_path: /tmp/runs}\n"
    with pytest.raises(ConfigError, match=r"'job' twice in the same section \(again on line 5\)"):
        parse_config(two_jobs)
    with pytest.raises(ConfigError, match="'plan' twice"):
        parse_config(MINIMAL.replace("user_id}", "user_id, properties: {plan: a, plan: b}}"))
    # A YAML merge key is not a repeat: the section's own keys override the merged ones.
    merged = "base: &base {event: name, time: ts}\nmapping: {<<: *base, time: ts2}\n"
    assert yaml.load(merged, Loader=UniqueKeyLoader)["mapping"] == {"event": "name", "time": "ts2"}


@pytest.mark.parametrize(("overrides", "message"), [
    (["mixpanel.timeout_s=0"], "mixpanel.timeout_s must be between 0.1 and 3600, got 0"),
    (["job.recent_days=7"], "job.recent_days is for job.order: recent_first"),
    (["job.mode=incremental", "job.trigger_interval_s=30"], "job.trigger_interval_s is for job.trigger: continuous"),
    (["source.format=delta", "job.mode=incremental", "job.max_bytes_per_batch=lots"],
     "job.max_bytes_per_batch must be a whole number of bytes with an optional unit, such as 512m or 1g, got 'lots'"),
    (["source.format=delta", "job.mode=incremental", "job.max_bytes_per_batch=1.5g"], "got '1.5g'"),
    (["source.format=delta", "job.mode=incremental", "source.starting_timestamp=yesterday"],
     "source.starting_timestamp must be an ISO 8601 date or timestamp"),
    (["source.format=delta", "source.timestamp=yesterday"], "source.timestamp must be an ISO 8601 date or timestamp"),
])
def test_values_spark_or_requests_would_refuse_later_are_refused_up_front(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(MINIMAL, overrides)


def test_byte_sizes_and_timestamps_that_delta_reads_are_taken() -> None:
    for size in ("512m", "1g", "2TB", "1048576", "64 kb"):
        parse_config(MINIMAL, ["source.format=delta", "job.mode=incremental", f"job.max_bytes_per_batch={size}"])
    for key in ("source.starting_timestamp=2024-01-31", "source.starting_timestamp='2024-01-31 10:00:00'"):
        parse_config(MINIMAL, ["source.format=delta", "job.mode=incremental", key])
    recent = parse_config(MINIMAL, ["job.order=recent_first", "job.recent_days=7"]).job
    assert recent.recent_days == 7


def test_a_section_whose_keys_are_all_commented_out_is_empty() -> None:
    assert parse_config(MINIMAL + "job:\n  # time_from: 2024-01-01\n").job.records_per_partition == 200_000
    with pytest.raises(ConfigError, match=r"missing required key mapping\.event"):
        parse_config("source: {format: parquet, path: x}\nmapping:\n  # event: name\n")


def test_credentials_from_a_secret_file_lose_their_trailing_newline() -> None:
    mixpanel = parse_config(MINIMAL + "mixpanel: {project_id: '7'}").mixpanel
    from_files = {"MP_SERVICE_ACCOUNT_USER": "sa\n", "MP_SERVICE_ACCOUNT_SECRET": " s3cret\n"}
    creds = credentials_from_env(from_files, mixpanel)
    assert creds.authorization_header() == "Basic c2E6czNjcmV0"  # base64("sa:s3cret")
    with pytest.raises(ConfigError, match="no Mixpanel credentials"):
        credentials_from_env({"MP_PROJECT_TOKEN": "\n"}, mixpanel)


def test_an_unknown_log_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert build_parser().parse_args(["--config", "job.yaml", "--log-level", "debug"]).log_level == "DEBUG"
    assert build_parser().parse_args(["--config", "job.yaml", "--log-level", "WARN"]).log_level == "WARN"  # make's
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["--config", "job.yaml", "--log-level", "verbose"])
    assert stopped.value.code == 2
    assert "invalid choice: 'VERBOSE'" in capsys.readouterr().err


def test_a_config_path_not_here_is_left_to_a_spark_connect_server(tmp_path: Path) -> None:
    here = tmp_path / "job.yaml"
    here.write_text(MINIMAL)
    assert read_here(str(here), remote=False) and read_here(str(here), remote=True)
    assert read_here("/Volumes/main/mixpanel/job.yaml", remote=False)  # not found: said before Spark starts
    assert not read_here("/Volumes/main/mixpanel/job.yaml", remote=True)  # a Databricks Connect client's
    assert not read_here("s3://bucket/job.yaml", remote=False)


def test_plain_http_to_another_machine_is_warned_about(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MP_PROJECT_TOKEN", "tok")
    for host, warned in (("http://127.0.0.1:9", False), ("https://relay.example", False),
                         ("http://relay.example:8080", True)):
        caplog.clear()
        credentials_for(parse_config(MINIMAL, [f"mixpanel.api_host={host}"]), dry_run=False)
        assert ("plain http, to relay.example" in caplog.text) == warned, host
    assert "tok" not in caplog.text


def test_help_says_where_credentials_come_from_and_what_each_exit_code_means() -> None:
    shown = build_parser().format_help()
    assert "MP_SERVICE_ACCOUNT_SECRET" in shown and "MP_PROJECT_TOKEN" in shown
    assert all(f"\n  {code} " in shown for code in ("0", "1", "2", "3", "4", "130"))


@pytest.mark.parametrize(("text", "message"), [
    ("mapping: {distinct_id: u, set: {plan: p}}", "mapping.set is for job.kind: people or groups, and this "
                                                  "config's job.kind is events"),
    ("mapping: {event: e, time: t, distinct_id: u}\njob: {kind: people}", "mapping.event is for job.kind: events"),
    ("mapping: {lookup_table_id: t, key: k}", "mapping.key is for job.kind: lookup_table"),
])
def test_a_mapping_written_for_another_kind_is_told_which_kind_it_is_for(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config("source: {format: parquet, path: x}\n" + text)
