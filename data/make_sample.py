"""Regenerate data/sample_events.json.gz: 3,000 events in Mixpanel's own shape, the same every time."""

import gzip
import json
import random
import uuid
from pathlib import Path

EVENTS = ["Page View", "Sign Up", "Add to Cart", "Purchase", "Search"]
CITIES = ["San Francisco", "Seattle", "London", "Berlin", "Bengaluru", "São Paulo", "Tokyo"]
PLANS = ["free", "pro", "enterprise"]
START_S = 1_717_200_000  # 2024-06-01T00:00:00Z
SPAN_S = 30 * 86_400


def sample_events(count: int = 3000, seed: int = 7):
    rng = random.Random(seed)
    for _ in range(count):
        event = rng.choice(EVENTS)
        properties = {
            "time": START_S + rng.randrange(SPAN_S),
            "distinct_id": f"user-{rng.randrange(400):04d}",
            "$insert_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "city": rng.choice(CITIES),
            "plan": rng.choice(PLANS),
            "page": f"/docs/{rng.choice(['start', 'api', 'pricing', 'blog'])}",
        }
        if event == "Purchase":
            properties["price"] = round(rng.uniform(5, 500), 2)
        yield {"event": event, "properties": properties}


if __name__ == "__main__":
    target = Path(__file__).with_name("sample_events.json.gz")
    with gzip.GzipFile(target, "wb", mtime=0) as out:
        for event in sample_events():
            out.write((json.dumps(event, ensure_ascii=False) + "\n").encode("utf-8"))
    print(f"wrote {target}")
