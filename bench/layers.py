"""Which channels-redis layer: RedisChannelLayer or RedisPubSubChannelLayer?

Two processes, as in production: a receiver process holds the sockets'
channels (and their group memberships), a sender process publishes. Measured
for each layer, interleaved, several rounds:

- direct: `send` to one channel, one at a time, round trip via a reply channel;
- fan-out: `group_send` to a user group of 100 members in the receiver
  process, time until all 100 have the message.

Run: .venv/bin/python bench/layers.py [--redis redis://127.0.0.1:6379/0] [--rounds 3]
Talks only to the given Redis (loopback by default); bounded in count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import secrets
import statistics
import sys
import time
from typing import Any

LAYERS = {
    "core": "channels_redis.core.RedisChannelLayer",
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
}
DIRECT_COUNT = 2000
FANOUT_COUNT = 200
MEMBERS = 100


def make_layer(kind: str, url: str, prefix: str) -> Any:
    from channels_redis.core import RedisChannelLayer
    from channels_redis.pubsub import RedisPubSubChannelLayer

    if kind == "core":
        return RedisChannelLayer(hosts=[url], prefix=prefix, capacity=10_000)
    return RedisPubSubChannelLayer(hosts=[url], prefix=prefix)


async def receiver_main(kind: str, url: str, prefix: str, conn: Any) -> None:
    layer = make_layer(kind, url, prefix)
    echo = await layer.new_channel()
    members = [await layer.new_channel() for _ in range(MEMBERS)]
    for member in members:
        await layer.group_add("bench.user", member)
    conn.send((echo, members))

    async def echo_loop() -> None:
        while True:
            message = await layer.receive(echo)
            if message.get("stop"):
                return
            await layer.send(message["reply_to"], {"type": "pong", "n": message["n"]})

    async def member_loop(channel: str) -> None:
        while True:
            message = await layer.receive(channel)
            if message.get("stop"):
                return
            await layer.send(message["reply_to"], {"type": "got", "n": message["n"]})

    await asyncio.gather(echo_loop(), *(member_loop(m) for m in members))
    await layer.flush()


def receiver(kind: str, url: str, prefix: str, conn: Any) -> None:
    asyncio.run(receiver_main(kind, url, prefix, conn))


async def sender_main(kind: str, url: str, prefix: str, echo: str, members: list[str]) -> dict:
    layer = make_layer(kind, url, prefix)
    reply = await layer.new_channel()
    # Direct round trips.
    started = time.perf_counter()
    for n in range(DIRECT_COUNT):
        await layer.send(echo, {"type": "ping", "n": n, "reply_to": reply})
        answer = await asyncio.wait_for(layer.receive(reply), 5)
        assert answer["n"] == n
    direct_per_s = DIRECT_COUNT / (time.perf_counter() - started)
    # Fan-out to a group of MEMBERS.
    latencies = []
    for n in range(FANOUT_COUNT):
        t0 = time.perf_counter()
        await layer.group_send("bench.user", {"type": "direct", "n": n, "reply_to": reply})
        for _ in range(MEMBERS):
            got = await asyncio.wait_for(layer.receive(reply), 5)
            assert got["n"] == n
        latencies.append((time.perf_counter() - t0) * 1000)
    for channel in [echo, *members]:
        await layer.send(channel, {"type": "stop", "stop": True})
    await layer.flush()
    return {
        "direct_round_trips_per_s": direct_per_s,
        "fanout_100_p50_ms": statistics.median(latencies),
        "fanout_100_p99_ms": sorted(latencies)[int(len(latencies) * 0.99) - 1],
    }


def one_round(kind: str, url: str) -> dict:
    prefix = f"bench{secrets.token_hex(3)}"
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.Process(target=receiver, args=(kind, url, prefix, child))
    process.start()
    echo, members = parent.recv()
    try:
        return asyncio.run(sender_main(kind, url, prefix, echo, members))
    finally:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    results: dict[str, list[dict]] = {kind: [] for kind in LAYERS}
    for _ in range(args.rounds):
        for kind in LAYERS:
            results[kind].append(one_round(kind, args.redis))
            print(f"{kind}: {results[kind][-1]}", file=sys.stderr)
    metrics = list(results["core"][0])
    print("| metric | " + " | ".join(LAYERS.values()) + " |")
    print("| --- | " + " | ".join("---" for _ in LAYERS) + " |")
    for metric in metrics:
        cells = []
        for kind in LAYERS:
            values = [r[metric] for r in results[kind]]
            cells.append(
                f"{statistics.median(values):,.1f} ({min(values):,.1f}-{max(values):,.1f})"
            )
        print(f"| {metric} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
