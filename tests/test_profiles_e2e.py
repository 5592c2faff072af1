"""User and group profiles from the same job (job.kind people / groups), end to end against the fake server."""

import datetime as dt
import json
from pathlib import Path

import pytest
from pyspark.sql import DataFrame, SparkSession

from mp_spark.cli import main
from mp_spark.config import ConfigError, ProfileMappingConfig
from mp_spark.profiles import to_profile_updates
from tests.fake_mixpanel import FakeMixpanel, Faults
from tests.test_backfill_e2e import FAST_RETRIES, run_job, summary_of
from tests.test_mapping import DST_WALL_CLOCKS, mixpanel_date, wall_clock_rows

USERS = 300
SIGNUP = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


@pytest.fixture
def project_token(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MP_SERVICE_ACCOUNT_USER", "MP_SERVICE_ACCOUNT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MP_PROJECT_TOKEN", "tok-123")


@pytest.fixture(scope="module")
def users(spark: SparkSession) -> DataFrame:
    rows = [(f"user-{i:03d}", ["free", "pro"][i % 2], SIGNUP, f"acme-{i % 7}", [f"t{i % 3}", "all"])
            for i in range(USERS)]
    return spark.createDataFrame(rows, "user_id string, plan string, signup timestamp, company string, "
                                       "tags array<string>")


@pytest.fixture(scope="module")
def user_sources(users: DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("users")
    users.write.parquet(str(root / "parquet"))
    users.write.format("delta").save(str(root / "delta"))
    users.write.json(str(root / "json"))  # signup becomes an ISO string (so the mapping casts it), tags a list
    return {fmt: str(root / fmt) for fmt in ("parquet", "delta", "json")}


def profile_config(tmp_path: Path, kind: str, source_format: str, path: str, server: FakeMixpanel,
                   mapping: dict) -> str:
    config = {
        "source": {"format": source_format, "path": path},
        "mapping": mapping,
        "mixpanel": {"api_host": server.url, "max_batch_events": 100},
        "job": {"kind": kind, "records_per_partition": 500, "results_path": str(tmp_path / "results")},
    }
    target = tmp_path / f"{kind}.json"
    target.write_text(json.dumps(config))
    return str(target)


PEOPLE = {
    "distinct_id": "user_id",
    "set": {"plan": "plan", "Signup Date": "timestamp(signup)", "$email": "concat(user_id, '@example.com')"},
    "set_once": {"First Plan": "plan"},
    "union": {"tags": "tags"},
    "unset": ["legacy_score"],
}


@pytest.mark.parametrize("source_format", ["parquet", "delta", pytest.param("json", marks=pytest.mark.connect)])
def test_people_profiles_get_every_operation_once_per_user(
    user_sources: dict[str, str], mixpanel: FakeMixpanel, project_token: None, tmp_path: Path,
    source_format: str,
) -> None:
    mixpanel.set_faults(Faults(rate_429=0.1, rate_5xx=0.05, rate_drop=0.02, seed=3))
    config = profile_config(tmp_path, "people", source_format, user_sources[source_format], mixpanel, PEOPLE)

    assert run_job(config) == 0

    profiles = mixpanel.profiles
    assert len(profiles) == USERS
    assert profiles["user-001"] == {"plan": "pro", "Signup Date": "2024-01-02T03:04:05",
                                    "$email": "user-001@example.com", "First Plan": "pro", "tags": ["t1", "all"]}
    summary = summary_of(tmp_path)
    updates = USERS * 4  # set, set_once, union, unset
    assert (summary["rows_read"], summary["imported"], summary["rejected"], summary["invalid"]) == (
        updates, updates, 0, 0)
    assert mixpanel.engage_updates >= updates and mixpanel.foreign_token_updates == 0
    assert sum(mixpanel.injected.values()) > 0


GROUPS = {"group_key": "company_id", "group_id": "company", "set": {"plan": "plan"},
          "union": {"members": "array(user_id)"}}


@pytest.mark.parametrize("source_format", ["parquet", "delta", "json"])
def test_groups_profiles_by_group_key_and_id(
    user_sources: dict[str, str], mixpanel: FakeMixpanel, project_token: None, tmp_path: Path,
    source_format: str,
) -> None:
    mixpanel.set_faults(Faults(rate_429=0.1, rate_5xx=0.05, rate_5xx_after_import=0.05, seed=4))
    config = profile_config(tmp_path, "groups", source_format, user_sources[source_format], mixpanel, GROUPS)

    assert run_job(config, "mixpanel.max_batch_events=20") == 0  # 30 requests: some draw a fault

    groups = mixpanel.group_profiles
    assert set(groups) == {("company_id", f"acme-{i}") for i in range(7)}
    members = groups[("company_id", "acme-0")]["members"]
    assert sorted(members) == [f"user-{i:03d}" for i in range(0, USERS, 7)]
    assert summary_of(tmp_path)["imported"] == USERS * 2
    assert sum(mixpanel.injected.values()) > 0


@pytest.mark.parametrize(("kind", "mapping", "updates"), [("people", PEOPLE, USERS * 4), ("groups", GROUPS, USERS * 2)])
def test_a_dry_run_of_profile_updates_would_import_every_one_in_one_request_a_batch(
    user_sources: dict[str, str], mixpanel: FakeMixpanel, tmp_path: Path, kind: str, mapping: dict, updates: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = profile_config(tmp_path, kind, "parquet", user_sources["parquet"], mixpanel, mapping)

    assert main(["--config", config, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "updates as they would be sent" in out and "updates/s" in out and "events" not in out
    # One row per user; a company is in several rows, whose updates land in no set order.
    repeated = "warning: 7 profiles updated by several source rows" in out
    assert repeated == (kind == "groups")

    summary = summary_of(tmp_path)
    assert (summary["dry_run"], summary["imported"], summary["rejected"]) == (True, updates, 0)
    assert summary["requests"] == summary["batches"]  # none halved, as a refused batch would be
    assert mixpanel.requests == 0


def test_profile_rows_without_an_id_are_set_aside_and_nothing_leaks_the_token(
    spark: SparkSession, mixpanel: FakeMixpanel, project_token: None, tmp_path: Path,
) -> None:
    source = tmp_path / "people"
    spark.createDataFrame([("u1", "pro"), (None, "free"), ("null", "free")], "user_id string, plan string") \
        .write.parquet(str(source))
    config = profile_config(tmp_path, "people", "parquet", str(source), mixpanel,
                            {"distinct_id": "user_id", "set": {"plan": "plan"}})

    assert run_job(config, "mapping.ignore_time=false") == 1

    assert mixpanel.profiles == {"u1": {"plan": "pro"}}
    summary = summary_of(tmp_path)
    assert (summary["rows_read"], summary["imported"], summary["invalid"]) == (3, 1, 2)
    rejected = spark.read.json(str(tmp_path / "results" / "rejected")).collect()
    assert sorted(r.message for r in rejected) == ["$distinct_id is a placeholder value Mixpanel rejects",
                                                   "$distinct_id is null or empty"]
    written = "".join(p.read_text(errors="replace") for p in (tmp_path / "results").rglob("*") if p.is_file())
    assert "tok-123" not in written


def test_profiles_need_the_project_token(
    user_sources: dict[str, str], mixpanel: FakeMixpanel, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("MP_PROJECT_TOKEN", raising=False)
    monkeypatch.setenv("MP_SERVICE_ACCOUNT_USER", "sa-user")
    monkeypatch.setenv("MP_SERVICE_ACCOUNT_SECRET", "sa-secret")
    config = profile_config(tmp_path, "people", "parquet", user_sources["parquet"], mixpanel, PEOPLE)

    assert run_job(config, *FAST_RETRIES) == 2
    assert "MP_PROJECT_TOKEN" in capsys.readouterr().err
    assert mixpanel.requests == 0


@pytest.mark.parametrize("kind", ["people", pytest.param("groups", marks=pytest.mark.connect)])
def test_the_driver_checks_with_one_update_before_any_executor_sends(
    user_sources: dict[str, str], mixpanel: FakeMixpanel, project_token: None, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], kind: str,
) -> None:
    """Mixpanel cannot be reached: the driver's one update exhausts its attempts, and nothing else is sent.
    (A wrong token cannot be told this way: /engage and /groups answer 200 to another project's token.)"""
    mixpanel.set_faults(Faults(rate_5xx=1.0))
    mapping = PEOPLE if kind == "people" else GROUPS
    config = profile_config(tmp_path, kind, "parquet", user_sources["parquet"], mixpanel, mapping)

    assert run_job(config, *FAST_RETRIES, "mixpanel.max_attempts=2") == 3
    assert mixpanel.requests == 2  # one update, tried twice
    assert f"/{'engage' if kind == 'people' else 'groups'}: gave up after 2 attempts" in capsys.readouterr().err
    assert not (tmp_path / "results" / "outcomes").exists()  # no sending job started


def test_a_null_value_is_left_out_of_the_update_whatever_the_session_s_json_settings(spark: SparkSession) -> None:
    """Sent as "plan": null, $set would wipe the profile's plan."""
    users = spark.createDataFrame([("u1", None, "gold")], "user_id string, plan string, tier string")
    mapping = ProfileMappingConfig(distinct_id="user_id", set={"plan": "plan", "tier": "tier"})
    spark.conf.set("spark.sql.jsonGenerator.ignoreNullFields", "false")
    try:
        lines = [json.loads(row.line) for row in users.transform(to_profile_updates(mapping)).collect()]
    finally:
        spark.conf.unset("spark.sql.jsonGenerator.ignoreNullFields")
    assert lines == [{"$distinct_id": "u1", "$ignore_time": True, "$set": {"tier": "gold"}}]


def test_a_profile_list_may_hold_256_kb_where_an_events_holds_8(spark: SparkSession) -> None:
    tags = [f"tag-{i:04d}-" + "x" * 40 for i in range(200)]  # about 10 KB of JSON
    users = spark.createDataFrame([("u1", tags, '{"seen": ' + json.dumps(tags) + "}")],
                                  "user_id string, tags array<string>, extra string")
    mapping = ProfileMappingConfig(distinct_id="user_id", set={"tags": "tags"}, union={"all tags": "tags"},
                                   spread=["extra"])
    set_update, union_update = [json.loads(row.line) for row in users.transform(to_profile_updates(mapping)).collect()]
    assert set_update["$set"]["tags"] == tags and set_update["$set"]["seen"] == tags  # named, and spread
    assert union_update["$union"]["all tags"] == tags


def test_a_profile_row_without_its_mapped_ip_is_not_geolocated_to_the_cluster(spark: SparkSession) -> None:
    users = spark.createDataFrame([("u1", "203.0.113.9"), ("u2", None)], "user_id string, addr string")
    mapping = ProfileMappingConfig(distinct_id="user_id", ip="addr", set={"seen": "true"})
    lines = [json.loads(row.line) for row in users.transform(to_profile_updates(mapping)).collect()]
    assert [line["$ip"] for line in lines] == ["203.0.113.9", "0"]


def test_profile_times_are_utc_text_in_every_session_zone(spark: SparkSession, session_zone: str) -> None:
    users = wall_clock_rows(spark, DST_WALL_CLOCKS)
    mapping = ProfileMappingConfig(distinct_id="wall", set={"at": "instant", "wall clock": "ntz"},
                                   set_once={"first": "array(instant)"})
    updates = [json.loads(row.line) for row in users.transform(to_profile_updates(mapping)).collect()]
    assert len(updates) == 2 * len(DST_WALL_CLOCKS)
    for update in updates:
        want = mixpanel_date(update["$distinct_id"])
        if "$set" in update:
            assert update["$set"] == {"at": want, "wall clock": want}
        else:
            assert update["$set_once"] == {"first": [want]}


@pytest.mark.parametrize("operation", ["set", "set_once"])
def test_binary_named_in_a_profile_mapping_is_a_config_error(spark: SparkSession, operation: str) -> None:
    users = spark.createDataFrame([("u1", bytearray(b"\x00"))], "user_id string, avatar binary")
    mapping = ProfileMappingConfig(distinct_id="user_id", **{operation: {"Avatar": "avatar"}})
    with pytest.raises(ConfigError, match=rf"^mapping\.{operation}\.Avatar is binary.*base64\("):
        users.transform(to_profile_updates(mapping))
