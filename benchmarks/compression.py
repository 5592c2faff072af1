"""gzip speed and ratio on event JSON: `python benchmarks/compression.py` (not part of the tests).

Compares stdlib zlib with ISA-L (`isal`) and zlib-ng (`zlib-ng`) when they are installed, on
2000-event ndjson batches of events shaped like the benchmark's (about 330 bytes each).
"""

from __future__ import annotations

import importlib
import json
import random
import time
import zlib

LEVELS = {"zlib": (1, 6), "isal.isal_zlib": (0, 1, 2, 3), "zlib_ng.zlib_ng": (1, 6)}


def sample_bodies(events: int = 20_000, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    lines = []
    for i in range(events):
        properties = {
            "time": 1_717_200_000_000 + i * 37, "distinct_id": f"user-{rng.randrange(100_000):06d}",
            "$insert_id": f"{rng.getrandbits(144):036x}", "city": rng.choice(["San Francisco", "Berlin", "Tokyo"]),
            "plan": rng.choice(["free", "pro"]), "amount": round(rng.uniform(0, 500), 2), "flag": rng.random() < 0.5,
            "page": f"/p/{rng.randrange(5000)}", "ua": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
            "ts": f"2024-06-01T00:00:{i % 60:02d}", "count": rng.randrange(1000),
            "ref": rng.choice(["google", "direct", "twitter"]),
        }
        event = {"event": rng.choice(["Page View", "Sign Up", "Purchase"]), "properties": properties}
        lines.append(json.dumps(event, separators=(",", ":")).encode())
    return [b"\n".join(lines[i:i + 2000]) for i in range(0, events, 2000)]


def main() -> None:
    bodies = sample_bodies()
    events = 2000 * len(bodies)
    raw = sum(map(len, bodies))
    print(f"{events:,} events, {raw / events:.0f} bytes each; events/s on one core, ratio = gzip / JSON")
    for name, levels in LEVELS.items():
        try:
            module = importlib.import_module(name) if name != "zlib" else zlib
        except ImportError:
            print(f"{name}: not installed")
            continue
        for level in levels:
            started, out = time.perf_counter(), 0
            for _ in range(3):
                for body in bodies:
                    compressor = module.compressobj(level, module.DEFLATED, 31)
                    out += len(compressor.compress(body) + compressor.flush())
            rate = 3 * events / (time.perf_counter() - started)
            print(f"{name:16s} level {level}: {rate:>10,.0f} events/s  ratio {out / 3 / raw:.3f}")


if __name__ == "__main__":
    main()
