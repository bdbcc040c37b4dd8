"""The producer decision, measured: does the idempotent producer change what a consumer sees when
the partition leader dies, and what does it cost?

The worker publishes through Faust's aiokafka producer (acks=all). This experiment runs that
client alone against a three-broker KRaft cluster of its own (replication 3, min.insync.replicas
2), once with ``enable_idempotence`` off and once on, side by side in one run:

- **leader kill -9**: ``n`` numbered messages sent with up to ``in_flight`` unacknowledged, the
  partition's leader killed with -9 a third of the way in and started again; then the topic is
  read back and the numbers counted: lost (acked but absent), duplicated, out of order.
- **throughput**: ``n`` messages to a healthy cluster, messages per second.

    python -m chaos.producer [--messages N]

prints one table. It is not part of ``make test`` (about two minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from chaos.harness import LocalServices

CLUSTER_PORT = 29692


@dataclass
class Result:
    mode: str
    case: str
    sent: int
    acked: int
    lost: int
    duplicated: int
    out_of_order: int
    rate: float

    def row(self) -> str:
        return (
            f"| {self.mode} | {self.case} | {self.sent} | {self.acked} | {self.lost} | {self.duplicated} | "
            f"{self.out_of_order} | {self.rate:.0f} |"
        )


async def _produce(
    brokers: str, topic: str, n: int, idempotent: bool, in_flight: int, kill: asyncio.Event | None
) -> tuple[set[int], float]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=brokers, acks="all", enable_idempotence=idempotent, linger_ms=5, request_timeout_ms=10_000
    )
    await producer.start()
    acked: set[int] = set()
    started = time.monotonic()
    try:
        pending: list[tuple[int, asyncio.Future[object]]] = []
        for i in range(n):
            if kill is not None and i == n // 3:
                kill.set()
            pending.append((i, await producer.send(topic, str(i).encode(), partition=0)))
            if len(pending) >= in_flight:
                await _settle(pending, acked)
        await _settle(pending, acked)
    finally:
        await producer.stop()
    return acked, time.monotonic() - started


async def _settle(pending: list[tuple[int, asyncio.Future[object]]], acked: set[int]) -> None:
    results = await asyncio.gather(*(f for _, f in pending), return_exceptions=True)
    acked.update(i for (i, _), r in zip(pending, results, strict=True) if not isinstance(r, BaseException))
    pending.clear()


def _read_back(brokers: str, topic: str) -> list[int]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic, bootstrap_servers=brokers, auto_offset_reset="earliest", group_id=None, consumer_timeout_ms=5000
    )
    try:
        return [int(r.value) for r in consumer]
    finally:
        consumer.close()


def _topic(cluster: LocalServices, name: str) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=cluster.brokers)
    try:
        admin.create_topics([NewTopic(name, 1, 3)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the partition has a leader
            parts = admin.describe_topics([name])[0]["partitions"]
            if parts and parts[0]["leader_id"] >= 0:
                return
            time.sleep(0.2)
    finally:
        admin.close()


def one(cluster: LocalServices, idempotent: bool, n: int, in_flight: int, kill: bool, down_s: float) -> Result:
    topic = f"producer-{'idem' if idempotent else 'plain'}-{uuid.uuid4().hex[:6]}"
    _topic(cluster, topic)

    async def run() -> tuple[set[int], float]:
        if not kill:
            return await _produce(cluster.brokers, topic, n, idempotent, in_flight, None)
        trigger = asyncio.Event()

        async def killer() -> None:
            await trigger.wait()
            leader = cluster.leader_of([topic])
            await asyncio.to_thread(cluster.kill9_kafka_node, leader)
            await asyncio.sleep(down_s)
            await asyncio.to_thread(cluster.start_kafka_node, leader)

        task = asyncio.create_task(killer())
        out = await _produce(cluster.brokers, topic, n, idempotent, in_flight, trigger)
        await task
        return out

    acked, seconds = asyncio.run(run())
    got = _read_back(cluster.brokers, topic)
    counts = Counter(got)
    return Result(
        mode="idempotent" if idempotent else "plain (Faust's)",
        case="leader kill -9" if kill else "healthy",
        sent=n,
        acked=len(acked),
        lost=len(acked - set(counts)),
        duplicated=sum(c - 1 for c in counts.values()),
        out_of_order=sum(1 for a, b in zip(got, got[1:], strict=False) if b < a),
        rate=n / seconds,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chaos.producer", description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=60_000, help="messages sent in each of the two runs")
    p.add_argument("--in-flight", type=int, default=2000, help="unacknowledged sends at most")
    p.add_argument("--down-s", type=float, default=10.0, help="how long the killed leader stays down")
    ns = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="emostream-producer-"))
    cluster = LocalServices(workdir, kafka_port=CLUSTER_PORT, kafka_nodes=3)
    cluster.start_kafka()
    try:
        results = [
            one(cluster, idem, ns.messages, ns.in_flight, kill, ns.down_s)
            for kill in (False, True)
            for idem in (False, True)
        ]
    finally:
        cluster.script("kafka.sh", "down", "--wipe")
    print("| producer | case | sent | acked | lost | duplicated | out of order | msg/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(r.row())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
