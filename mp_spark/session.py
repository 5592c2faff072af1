"""The one place a SparkSession is made, and the executors checked before they are given work.

Sessions, in this order: a Spark Connect server named by `--remote` or `SPARK_REMOTE` (Databricks
standard access mode and Databricks Connect are Spark Connect too); the session that spark-submit,
Databricks, EMR or a notebook made; else embedded local Spark for a plain `python` run.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pyspark.cloudpickle import register_pickle_by_value
from pyspark.errors import PySparkRuntimeError
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.util import is_remote_only

import mp_spark
from mp_spark import class_archive, probe
from mp_spark.config import Config, ConfigError
from mp_spark.executor import ready_worker
from mp_spark.sources import is_small_local_source

log = logging.getLogger(__name__)

try:  # classic Spark's bridge to its JVM; Spark Connect's client alone (pyspark-client) has none
    from py4j.protocol import Py4JJavaError, Py4JNetworkError
except ImportError:
    class NoPy4JError(Exception):
        """Stands for py4j's errors where there is no py4j: never raised."""

    Py4JJavaError = Py4JNetworkError = NoPy4JError

DELTA_SQL_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
LOCAL_MASTER = re.compile(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?$")  # local, local[4], local[*, 4]
# Local Spark's one JVM runs the tasks too, and most local runs are short: HotSpot's optimising
# compiler (C2) spends their cores on Spark's start-up code (analysis, code generation). With its
# thresholds thirtyfold it keeps to the per-row loops, and with the parallel collector instead of G1
# a 2,000-event run took about a third less CPU (docs/performance.md).
LOCAL_COMPILER_OPTIONS = ("-XX:Tier4InvocationThreshold=150000 -XX:Tier4MinInvocationThreshold=18000"
                          " -XX:Tier4CompileThreshold=450000 -XX:Tier4BackEdgeThreshold=1200000")
LOCAL_COLLECTOR = "-XX:+UseParallelGC"
# A backfill of a few MB is over before any C2 code pays for its compiling: with C1 alone, a
# 2,000-event run took about a quarter less time and CPU; a 400,000-event run took longer.
SHORT_RUN_COMPILER_OPTIONS = "-XX:TieredStopAtLevel=1"
SHORT_RUN_SOURCE_BYTES = 4 << 20
# Where a user's own Java options may already choose a collector: a second one stops the JVM at start.
USER_JAVA_OPTIONS = ("JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "PYSPARK_SUBMIT_ARGS")
CHOOSES_COLLECTOR = re.compile(r"-XX:\+Use\w+GC\b")
# The probe must run where mp_spark may not be importable yet: ship its code, not a reference to it.
register_pickle_by_value(probe)


def get_spark(remote: str | None = None, config: Config | None = None, *, app_name: str = "mp-spark-backfill"
              ) -> SparkSession:
    """A Spark Connect session (`remote`, or SPARK_REMOTE), the session already running, or local Spark.

    Under spark-submit the JVM already exists and its master, packages and configs come from the
    command line; only a plain `python jobs/backfill.py` run starts local Spark here, with Delta
    unless the `config` (None: not read yet) names another format, and with a short run's JVM options
    when it is one.
    """
    if remote:
        return connect_session(remote, "--remote", app_name)
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if "SPARK_REMOTE" in os.environ:
        return connect_session(os.environ["SPARK_REMOTE"], "SPARK_REMOTE", app_name)
    builder = SparkSession.builder.appName(app_name)
    if "PYSPARK_GATEWAY_PORT" in os.environ:  # spark-submit, pyspark
        return started(builder, "are spark-submit's --master and its cluster right, and is the cluster up?")
    with_delta = config is None or config.source.format == "delta"
    needs = "is Java 17 or later installed (JAVA_HOME, if set, must hold bin/java)" + (
        ", and can Spark fetch Delta's jars from Maven Central (\"unresolved dependency\" above: the network or "
        "a proxy)" if with_delta else "")
    return started(local_builder(builder, with_delta=with_delta, short_run=is_short_run(config)), needs + "?")


def started(builder: SparkSession.Builder, hint: str) -> SparkSession:
    """The builder's session; when Spark does not start (its JVM exits, or refuses the session), a
    ConfigError with Spark's reason and `hint`."""
    try:
        return builder.getOrCreate()
    except Py4JJavaError as exc:
        reason = str(exc.java_exception)  # the error's own first line names only the call
    except PySparkRuntimeError as exc:
        if exc.getCondition() == "CONNECT_URL_NOT_SET" and is_remote_only():  # pyspark-client: no Spark of its own
            raise ConfigError("this Python has Spark Connect's client only (pyspark-client): give the job a "
                              "server with --remote sc://HOST:PORT or SPARK_REMOTE, or install pyspark to run "
                              "on local Spark") from None
        if exc.getCondition() != "JAVA_GATEWAY_EXITED":
            raise
        reason = str(exc)
    log.debug("Spark did not start", exc_info=True)
    first_line = reason.strip().splitlines()[0][:300].rstrip(".") if reason.strip() else "no reason given"
    raise ConfigError(f"Spark did not start: {first_line}; {hint} (Spark's own lines above say which)")


def connect_session(url: str, named_by: str, app_name: str) -> SparkSession:
    """A session of the Spark Connect server at `url` (which `named_by` gave), which has answered once.

    Raises ConfigError, naming the server's address but never the URL's parameters (they may hold a
    token), when the URL is not one, or when nothing answers there.
    """
    from mp_spark import connect_client  # needs grpc, which only a Connect client has

    address = urlparse(url).netloc.split(";")[0]
    try:
        spark = SparkSession.builder.remote(url).getOrCreate()  # parses the URL; no call to the server yet
    except ValueError as exc:  # Spark's message may quote the whole URL
        raise ConfigError(f"{named_by}: not a Spark Connect URL (sc://HOST:PORT, then /;name=value "
                          f"parameters): {type(exc).__name__} for {address or 'a URL without a host'}") from None
    connect_client.fail_fast_when_unreachable(spark, address)
    try:
        spark.version  # noqa: B018 - the first call to the server
    except Exception as exc:
        reason = connect_client.unreachable_reason(str(exc))
        if reason is None:
            raise
        connect_client.close(spark)
        raise ConfigError(f"{named_by}: cannot reach the Spark Connect server at {address}: "
                          f"{reason}; is the server running, and is this its address?") from None
    # The same session again, now that the server answers: the builder sets the name on it, as a conf.
    return SparkSession.builder.remote(url).appName(app_name).getOrCreate()


def is_short_run(config: Config | None) -> bool:
    """Whether a run is known, before it starts, to be short: a backfill of a small source on this
    machine's disk (local Spark then starts its JVM with the short run's compiler options)."""
    return config is not None and not config.incremental and \
        is_small_local_source(config.source, SHORT_RUN_SOURCE_BYTES)


def local_builder(
    builder: SparkSession.Builder, *, with_delta: bool, short_run: bool = False, master: str = "local[*, 4]"
) -> SparkSession.Builder:
    """Configure embedded local Spark: all cores, task retries as on a cluster, Delta jars from Maven.

    The default master gives each task 4 attempts, like a cluster's spark.task.maxFailures.
    """
    # Workers must run this same interpreter (not whatever `python3` is on PATH) to see the same
    # packages; PySpark takes the workers' interpreter from this variable when the context starts.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # The job logs its own progress lines; Spark's bar, which a plain `python` run would get, only
    # splices carriage returns and stage counts into them (and into any log file).
    builder = builder.master(master).config("spark.ui.showConsoleProgress", "false")
    java_options = local_java_options(short_run)
    if java_options:  # Spark puts these before spark.driver.extraJavaOptions, which still apply
        builder = builder.config("spark.driver.defaultJavaOptions", java_options)
    if with_delta:
        from delta import configure_spark_with_delta_pip  # a `local` extra, not needed on clusters

        for key, value in DELTA_SQL_CONF.items():
            builder = builder.config(key, value)
        builder = configure_spark_with_delta_pip(builder)
    return builder


def local_java_options(short_run: bool = False) -> str:
    """The local driver JVM's options: ours, unless Spark's configuration directory is there to set them.

    That directory goes first on the JVM's classpath, which no class archive can match, and its
    spark-defaults.conf may hold the administrator's spark.driver.defaultJavaOptions, which ours would replace.
    """
    if os.path.isdir(class_archive.spark_conf_dir()):
        return ""
    users_collector = any(CHOOSES_COLLECTOR.search(os.environ.get(name, "")) for name in USER_JAVA_OPTIONS)
    collector = "" if users_collector else LOCAL_COLLECTOR
    compiler = SHORT_RUN_COMPILER_OPTIONS if short_run else LOCAL_COMPILER_OPTIONS
    return " ".join(filter(None, [collector, compiler, class_archive.java_options()]))


def is_connect(spark: SparkSession) -> bool:
    return type(spark).__module__.startswith("pyspark.sql.connect")


@contextmanager
def jobs_tagged(spark: SparkSession, tag: str) -> Iterator[None]:
    """The Spark jobs this thread starts within the block carry `tag`, which `interrupt_jobs` stops from
    any thread. Classic Spark keeps a session's own tags per thread (a tag added by one thread is
    unknown to another's interruptTag), so there the tag is the SparkContext's."""
    connect = is_connect(spark)
    (spark.addTag if connect else spark.sparkContext.addJobTag)(tag)
    try:
        yield
    finally:
        (spark.removeTag if connect else spark.sparkContext.removeJobTag)(tag)


def interrupt_jobs(spark: SparkSession, tag: str) -> None:
    """Stop the running jobs of `jobs_tagged(spark, tag)`, whichever thread started them."""
    if is_connect(spark):
        spark.interruptTag(tag)
    else:
        spark.sparkContext.cancelJobsWithTag(tag)


@dataclass(frozen=True)
class Executors:
    cores: int  # tasks the cluster runs at once (its default parallelism)
    fixed: bool = False  # local Spark, whose cores cannot grow during the run (a cluster's may)


def prepare_executors(spark: SparkSession, *, probe: bool = True) -> Executors:
    """Make sure the executors can run the sending tasks (check_executors), unless `probe` is false
    (an earlier call of this run did), and find how many tasks the cluster runs at once.

    Raises ConfigError, naming what is missing, when the executors' Python cannot run the job.
    """
    if probe:
        check_executors(spark)
    master = spark.conf.get("spark.master", "")
    if runs_tasks_here(spark):
        threads = LOCAL_MASTER.match(master).group(1) or "1"
        return Executors(cores=(os.cpu_count() or 1) if threads == "*" else int(threads), fixed=True)
    # spark.range's default partitioning is the cluster's default parallelism, its cores.
    partition = spark.range(0, 1 << 16).select(F.spark_partition_id().alias("partition"))
    cores = partition.agg(F.max("partition")).first()[0] + 1
    return Executors(cores=cores, fixed=bool(LOCAL_MASTER.match(master)))  # a Connect server's own master


def runs_tasks_here(spark: SparkSession) -> bool:
    """Classic local Spark, whose tasks run this very Python."""
    return not is_connect(spark) and bool(LOCAL_MASTER.match(spark.conf.get("spark.master", "")))


def check_executors(spark: SparkSession) -> None:
    """Raise ConfigError when the executors' Python cannot run the sending tasks, after shipping
    mp_spark to a Connect server that lacks it. Nothing to check where the tasks run here."""
    if runs_tasks_here(spark):
        return
    found = run_probe(spark)
    if found.mp_spark != mp_spark.__version__ and is_connect(spark):
        ship_package(spark)
        found = run_probe(spark)
    if found.mp_spark is None:
        raise ConfigError("the executors' Python cannot import mp_spark: give spark-submit "
                          "--py-files dist/mp_spark.zip (make dist builds it), or install the wheel on the cluster")
    if found.mp_spark != mp_spark.__version__:
        log.warning("the executors run mp_spark %s, this driver %s", found.mp_spark, mp_spark.__version__)
    if found.missing:
        raise ConfigError(f"the executors' Python (version {found.python}) lacks {', '.join(found.missing)}: "
                          f"install {' '.join(found.missing)} there (docs/platforms.md)")


def start_python_workers(spark: SparkSession, count: int) -> None:
    """Start `count` Python workers of a local master (local Spark's, or a Connect server's, which has
    mp_spark by now), the sending tasks' imports done: Spark reuses them for the sending tasks,
    whose first wave would otherwise wait about 2 s for its workers. It is only a head start: should
    it fail, the sending tasks start their own workers (and say what is wrong)."""
    if count < 1:
        return
    try:
        spark.range(0, count, 1, count).mapInArrow(ready_worker, "ready boolean").collect()
    except Exception:
        log.debug("Python workers not started ahead of the sending tasks", exc_info=True)


def start_python_workers_meanwhile(spark: SparkSession, count: int) -> None:
    """start_python_workers on a thread of its own, while the caller goes on."""
    if count > 0:
        threading.Thread(target=start_python_workers, args=(spark, count), name="mp-spark-python-workers",
                         daemon=True).start()


def run_probe(spark: SparkSession) -> probe.Found:
    row = spark.range(1).mapInArrow(probe.look_around, probe.FOUND_SCHEMA).first()
    return probe.Found(**row.asDict())


def ship_package(spark: SparkSession) -> None:
    """Send mp_spark's own modules to the Connect server, for the Python workers of this session."""
    archive = Path(tempfile.mkdtemp(prefix="mp-spark-")) / "mp_spark.zip"
    archive.write_bytes(package_zip())
    log.info("shipping mp_spark %s to the Spark Connect server", mp_spark.__version__)
    spark.addArtifacts(str(archive), pyfile=True)


def package_zip() -> bytes:
    """mp_spark's own modules as a zip that Python imports from (zipimport)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zipped:
        for module in sorted(Path(mp_spark.__file__).parent.glob("*.py")):
            zipped.write(module, f"mp_spark/{module.name}")
    return buffer.getvalue()
