"""Throughput benchmark (not part of the tests): `python benchmarks/run.py [--events 2000000]`.

Generates N synthetic events (about 350 bytes of JSON each, 12 columns of mixed types) as Parquet,
then reports events/s, CPU seconds per million events and peak Python worker RSS for:
  a. the job end to end against a fast loopback receiver;
  b. the limit: the same read, serialization, batching and gzip with no HTTP (the job's --dry-run);
  c. a naive sender: Python dicts, json.dumps, one request at a time per partition;
  d. the job against a receiver that adds 250 ms to every answer;
  e. the job against a receiver that admits 30k events/s and answers 429 above it (pacing on);
  e0. the same with pacing off, for comparison;
  f. the job end to end with 1M-record partitions (the memory check).
And the whole command as a user runs it (`python jobs/backfill.py`, JVM start included, wall time,
several runs each for the spread):
  s. 2,000 events from Parquet;
  m. 1M events from Parquet;
  r. 1M events from Parquet as a dry run, alternating with m.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import requests
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from mp_spark.config import Credentials, parse_config
from mp_spark.run import RunOptions, run_job
from mp_spark.session import local_builder

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
TOKEN = Credentials("project_token", "benchmark-token", "")


def generate(spark: SparkSession, events: int, path: Path) -> None:
    marker = path / f"_EVENTS_{events}"
    if marker.exists():
        return
    pages = F.array(*[F.lit(p) for p in ("/docs/getting-started", "/pricing", "/blog/2024/launch", "/app/settings")])
    names = F.array(*[F.lit(n) for n in ("Page View", "Sign Up", "Add to Cart", "Purchase", "Search")])
    id_ = F.col("id")
    (
        spark.range(events, numPartitions=8)
        .select(
            F.format_string("user-%07d", F.abs(F.xxhash64(id_)) % 1_000_000).alias("user_id"),
            F.element_at(names, (id_ % 5 + 1).cast("int")).alias("event_name"),
            F.timestamp_seconds(F.lit(1_717_200_000) + (id_ * 7) % 15_000_000).alias("ts"),
            F.element_at(F.array(F.lit("free"), F.lit("pro"), F.lit("enterprise")), (id_ % 3 + 1).cast("int"))
            .alias("plan"),
            F.element_at(F.array(*[F.lit(c) for c in ("San Francisco", "Berlin", "Tokyo", "São Paulo")]),
                         (id_ % 4 + 1).cast("int")).alias("city"),
            F.concat(F.element_at(pages, (id_ % 4 + 1).cast("int")), F.lit("?ref="), (id_ % 997).cast("string"))
            .alias("page"),
            F.element_at(F.array(F.lit("google"), F.lit("direct"), F.lit("newsletter")), (id_ % 3 + 1).cast("int"))
            .alias("referrer"),
            F.round((id_ % 50_000) / 100.0, 2).alias("amount"),
            (id_ % 7).cast("int").alias("quantity"),
            (id_ % 2 == 0).alias("is_mobile"),
            F.expr("uuid()").alias("session_id"),
            F.lit("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0").alias("user_agent"),
        )
        .write.mode("overwrite").parquet(str(path))
    )
    marker.touch()


def job_config(data: Path, host: str, out: Path, **mixpanel: object) -> str:
    records = mixpanel.pop("records_per_partition", 200_000)
    return json.dumps({
        "source": {"format": "parquet", "path": str(data)},
        "mapping": {"event": "event_name", "time": "ts", "distinct_id": "user_id", "include_columns": "*",
                    "exclude_columns": ["event_name", "ts", "user_id"]},
        "mixpanel": {"api_host": host, **mixpanel},  # Mixpanel's retry advice, as shipped
        "job": {"records_per_partition": records, "results_path": str(out)},
    })


class Probe:
    """Wall time, machine-wide CPU (less the receiver's own), and peak RSS of any Python worker."""

    def __init__(self, receiver_pid: int) -> None:
        self.receiver_pid = receiver_pid
        self.peak_rss = 0
        self._stop = threading.Event()

    def __enter__(self) -> Probe:
        self.cpu0, self.rcv0, self.t0 = machine_cpu_s(), process_cpu_s(self.receiver_pid), time.monotonic()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seconds = time.monotonic() - self.t0
        self.receiver_cpu = process_cpu_s(self.receiver_pid) - self.rcv0
        self.cpu = (machine_cpu_s() - self.cpu0) - self.receiver_cpu

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            self.peak_rss = max([self.peak_rss, *python_worker_rss()])


def loop_seconds(steps: int = 10_000_000) -> float:
    """Seconds of a plain Python loop on one core. It shows one core's speed only: whole commands also
    slow down with the host's steal time and a cold page cache, which it misses (docs/performance.md)."""
    started = time.perf_counter()
    total = 0
    for step in range(steps):
        total += step
    return round(time.perf_counter() - started, 2)


def machine_cpu_s() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields[:7]) - fields[3] - fields[4]  # all but idle, iowait and steal (other VMs' time)
    return busy / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def python_worker_rss() -> list[int]:
    sizes = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"pyspark.daemon" in (entry / "cmdline").read_bytes():
                status = (entry / "status").read_text()
                sizes.append(int(status.split("VmRSS:")[1].split()[0]) * 1024)
        except (OSError, IndexError):
            continue
    return sizes


def naive_partition_sender(url: str):
    """The reference: a dict per row, json.dumps, hashlib, zlib level 6, one request at a time."""

    def send(rows) -> None:
        import gzip
        import hashlib
        import json

        import requests

        session = requests.Session()
        batch: list[str] = []

        def flush() -> None:
            body = gzip.compress("\n".join(batch).encode(), compresslevel=6)
            answer = session.post(url, data=body, auth=("benchmark-token", ""),
                                  headers={"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"})
            answer.raise_for_status()
            batch.clear()

        for row in rows:
            values = row.asDict()
            properties = {k: (v.strftime("%Y-%m-%dT%H:%M:%S") if hasattr(v, "strftime") else v)
                          for k, v in values.items() if k not in ("event_name", "ts", "user_id")}
            properties["time"] = int(values["ts"].timestamp() * 1000)
            properties["distinct_id"] = values["user_id"]
            key = json.dumps([values["event_name"], properties], sort_keys=True).encode()
            properties["$insert_id"] = hashlib.sha256(key).hexdigest()[:36]
            batch.append(json.dumps({"event": values["event_name"], "properties": properties}))
            if len(batch) == 2000:
                flush()
        if batch:
            flush()

    return send


def receiver_ceiling(url: str, seconds: float = 3.0, threads: int = 4) -> float:
    """Events/s the receiver alone absorbs: pre-gzipped 2000-event bodies from a few threads."""
    line = json.dumps({"event": "e", "properties": {"pad": "x" * 300}})
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    body = compressor.compress("\n".join([line] * 2000).encode()) + compressor.flush()
    counts = [0] * threads
    deadline = time.monotonic() + seconds

    def hammer(i: int) -> None:
        session = requests.Session()
        while time.monotonic() < deadline:
            session.post(url + "/import", data=body, headers={"Content-Encoding": "gzip"}).raise_for_status()
            counts[i] += 2000

    workers = [threading.Thread(target=hammer, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--only", default="abcdefgsmr", help="scenario letters to run (g is e0)")
    parser.add_argument("--pairs", type=int, default=5, help="runs of a and b, alternated (the median pair counts)")
    parser.add_argument("--commands", type=int, default=5, help="runs of each whole command (s, m, r)")
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    receiver = subprocess.Popen([sys.executable, str(HERE / "receiver.py"), str(port)])
    builder = (SparkSession.builder.appName("mp-spark-benchmark").config("spark.ui.enabled", "false")
               .config("spark.driver.memory", "4g"))
    spark = local_builder(builder, with_delta=False, master="local[2]").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    try:
        for _ in range(50):
            try:
                requests.get(url, timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        data = OUT / "events.parquet"
        generate(spark, args.events, data)
        ceiling = receiver_ceiling(url)
        print(f"receiver ceiling: {ceiling:,.0f} events/s (gunzip + count lines, 4 client threads)")
        print(f"one core's Python speed: a 10M-step loop takes {loop_seconds()} s")
        rows = run_scenarios(spark, args, data, url, receiver.pid)
        small, million = OUT / "events-2000.parquet", OUT / "events-1000000.parquet"
        generate(spark, 2000, small)
        generate(spark, 1_000_000, million)
        spark.stop()  # the commands start their own Spark, each on the machine's two cores
        times, cpu = run_commands(args, small, million, url)
    finally:
        receiver.terminate()
    report(rows, args.events, ceiling)
    report_commands(times, cpu)


def run_scenarios(spark: SparkSession, args: argparse.Namespace, data: Path, url: str, receiver_pid: int
                  ) -> dict[str, dict]:
    receiver_settings: dict = {}

    def configure(**settings: object) -> None:
        receiver_settings.clear()
        receiver_settings.update(settings)
        requests.post(url + "/configure", json=settings).raise_for_status()

    def job(name: str, dry_run: bool = False, **mixpanel: object) -> dict:
        config = parse_config(job_config(data, url, OUT / "runs" / name, **mixpanel))
        options = RunOptions(run_id=name, results_path=str(OUT / "runs" / name), dry_run=dry_run)
        with Probe(receiver_pid) as probe:
            summary = run_job(spark, config, TOKEN, options)
        stats = requests.get(url).json()
        if "admit_events_per_second" in receiver_settings:
            print(f"{name}: thousands of events admitted in each second of sending, ! for each 429:")
            print(timeline_text(stats["timeline"]))
        assert summary.balanced and summary.imported == args.events, summary
        return measure(probe, args.events, stats, retries=summary.retries)

    job("warm-up", dry_run=True)  # the JVM's JIT warms up here, so the first scenario is not penalised
    rows: dict[str, dict] = {}
    plan = {
        "a": lambda: (configure(), job("a"))[1],
        "b": lambda: (configure(), job("b", dry_run=True))[1],
        "c": lambda: naive(spark, data, url, receiver_pid, args.events, configure),
        "d": lambda: (configure(latency_s=0.25), job("d"))[1],
        "e": lambda: (configure(admit_events_per_second=30_000), job("e"))[1],
        "g": lambda: (configure(admit_events_per_second=30_000), job("e0", pacing=False))[1],
        "f": lambda: (configure(), job("f", records_per_partition=1_000_000))[1],
    }
    for letter, run in plan.items():
        if letter not in args.only or (letter == "b" and "a" in rows):
            continue
        # This machine's cores are a VM's, and their speed drifts by 10-20% within minutes: a ratio
        # compares runs made back to back.
        if letter == "a" and "b" in args.only:
            rows["a"], rows["b"] = median_pair(run, plan["b"], args.pairs)
        elif letter == "c" and "a" in args.only:
            a_just_before = plan["a"]()["events_per_second"]
            rows["c"] = {**run(), "a just before": a_just_before}
        else:
            rows[letter] = run()
        print(letter, json.dumps(rows[letter]), flush=True)
    return rows


def median_pair(run_a: Callable[[], dict], run_b: Callable[[], dict], pairs: int) -> tuple[dict, dict]:
    """a and b run alternately `pairs` times; the pair with the median a/b, all ratios noted in a's row."""
    runs = []
    for _ in range(pairs):
        runs.append((run_a(), run_b()))
        print("a then b:", *(json.dumps(run) for run in runs[-1]), flush=True)
    ratios = sorted((a["events_per_second"] / b["events_per_second"], i) for i, (a, b) in enumerate(runs))
    a, b = runs[ratios[len(ratios) // 2][1]]
    return {**a, "a/b of each pair": [round(ratio, 2) for ratio, _ in ratios]}, b


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since it started (Linux's /proc/stat): steadier than
    wall time on a VM whose speed drifts, and it counts the JVM, the Python workers and the receiver alike."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, stat.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def run_commands(args: argparse.Namespace, small: Path, million: Path, url: str
                 ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall seconds and the machine's busy CPU seconds of `python jobs/backfill.py` runs, each as a user
    starts it: a new process, a new JVM."""
    env = {**os.environ, "MP_PROJECT_TOKEN": TOKEN.username}
    times: dict[str, list[float]] = {letter: [] for letter in "smr" if letter in args.only}
    cpu: dict[str, list[float]] = {letter: [] for letter in times}

    def command(letter: str, data: Path, *extra: str) -> None:
        config = OUT / f"command-{letter}.json"
        config.write_text(job_config(data, url, OUT / "runs" / f"command-{letter}"))
        started, busy = time.monotonic(), busy_cpu_seconds()
        subprocess.run([sys.executable, str(HERE.parent / "jobs" / "backfill.py"), "--config", str(config), *extra],
                       env=env, check=True, capture_output=True)
        times[letter].append(round(time.monotonic() - started, 1))
        cpu[letter].append(round(busy_cpu_seconds() - busy, 1))
        print(f"{letter}: {times[letter][-1]} s, {cpu[letter][-1]} CPU s", flush=True)

    for _ in range(args.commands):
        if "s" in times:
            command("s", small)
        if "m" in times:
            command("m", million)
        if "r" in times:
            command("r", million, "--dry-run")
    return times, cpu


def report_commands(times: dict[str, list[float]], cpu: dict[str, list[float]]) -> None:
    labels = {"s": "s. 2,000 events (target <= 12 s)", "m": "m. 1M events (target <= 16 s)",
              "r": "r. 1M events, --dry-run (target: no slower than m)"}
    lines = ["| whole command, wall s | median | min | max | runs | machine's busy CPU s, median |",
             "|---|---:|---:|---:|---|---:|"]
    for letter, runs in times.items():
        if runs:
            ordered = sorted(runs)
            lines.append(f"| {labels[letter]} | {ordered[len(ordered) // 2]} | {ordered[0]} | {ordered[-1]} | "
                         f"{', '.join(map(str, runs))} | {sorted(cpu[letter])[len(runs) // 2]} |")
    text = "\n".join(lines)
    print(text)
    with (OUT / "results.md").open("a") as results:
        results.write("\n" + text + "\n")


def naive(spark: SparkSession, data: Path, url: str, receiver_pid: int, events: int, configure) -> dict:
    configure()
    source = spark.read.parquet(str(data))
    partitions = max(1, events // 200_000)
    with Probe(receiver_pid) as probe:
        source.repartition(partitions).foreachPartition(naive_partition_sender(url + "/import"))
    stats = requests.get(url).json()
    assert stats["events"] == events, stats
    return measure(probe, events, stats, retries=0)


def timeline_text(timeline: list[list[float]]) -> str:
    """The receiver's (seconds since its first request, events admitted or -1 for a 429) as one line."""
    admitted: dict[int, int] = {}
    throttled: dict[int, int] = {}
    for at, events in timeline:
        if events < 0:
            throttled[int(at)] = throttled.get(int(at), 0) + 1
        else:
            admitted[int(at)] = admitted.get(int(at), 0) + int(events)
    seconds = range(max([*admitted, *throttled], default=0) + 1)
    return " ".join(f"{admitted.get(i, 0) // 1000}" + "!" * throttled.get(i, 0) for i in seconds)


def measure(probe: Probe, events: int, receiver: dict, retries: int) -> dict:
    """End-to-end figures from the probe; the receiver's from its first request to its last answer."""
    sending_s = receiver["sending_s"]
    return {
        "events_per_second": round(events / probe.seconds),
        "sending_events_per_second": round(receiver["events"] / sending_s) if sending_s else None,
        "cpu_s_per_million": round(probe.cpu / events * 1e6, 1),
        "receiver_cpu_s": round(probe.receiver_cpu, 1),
        "peak_worker_rss_mb": round(probe.peak_rss / 2**20),
        "seconds": round(probe.seconds, 1),
        "requests": receiver["requests"],
        "throttled": receiver["throttled"],
        "peak_in_flight": receiver["peak_in_flight"],
        "retries": retries,
    }


def report(rows: dict[str, dict], events: int, ceiling: float) -> None:
    labels = {
        "a": "a. job, fast loopback receiver", "b": "b. limit: same pipeline, no HTTP (dry run)",
        "c": "c. naive sender (dicts, json.dumps, 1 request at a time)", "d": "d. job, receiver +250 ms",
        "e": "e. job, receiver admits 30k events/s (pacing on)", "g": "e0. same, pacing off",
        "f": "f. job, 1M-record partitions",
    }
    lines = [f"{events:,} events, receiver ceiling {ceiling:,.0f} events/s", "",
             "| scenario | events/s end to end | events/s while sending | CPU s / 1M events | peak worker RSS "
             "| requests | 429 share | peak in flight |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for letter, r in rows.items():
        share = r["throttled"] / r["requests"] if r["requests"] else 0.0
        sending = f"{r['sending_events_per_second']:,}" if r["sending_events_per_second"] else "-"
        lines.append(f"| {labels[letter]} | {r['events_per_second']:,} | {sending} | {r['cpu_s_per_million']} | "
                     f"{r['peak_worker_rss_mb']} MB | {r['requests']:,} | {share:.1%} | {r['peak_in_flight']} |")
    checks = []
    if {"a", "b"} <= rows.keys():
        each = rows["a"].get("a/b of each pair", [])
        checks.append(f"a/b = {rows['a']['events_per_second'] / rows['b']['events_per_second']:.2f} (target >= 0.8)"
                      + (f"; the median of {len(each)} pairs: {', '.join(map(str, each))}" if len(each) > 1 else ""))
    if {"a", "c"} <= rows.keys():
        a_events_per_second = rows["c"].get("a just before", rows["a"]["events_per_second"])
        checks.append(f"a/c = {a_events_per_second / rows['c']['events_per_second']:.1f} (target >= 3; a run just "
                      f"before c: {a_events_per_second:,} events/s)")
    if "d" in rows:
        checks.append(f"d = {rows['d']['sending_events_per_second']:,} events/s while sending (target >= 100k, "
                      "or >= 0.8 x a)")
    if "e" in rows:
        checks.append(f"e = {rows['e']['sending_events_per_second'] / 30_000:.2f} x 30k while sending "
                      "(target >= 0.9, 429s < 5%)")
    text = "\n".join([*lines, "", *checks])
    print(text)
    (OUT / "results.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
