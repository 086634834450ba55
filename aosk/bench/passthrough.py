"""The pass-through baseline of ``aosk bench worker``: the least a stream worker can do.

One process, one confluent-kafka consumer in a group of its own reading the journal
(read_committed), producing each record's key and value to a scratch topic (one output
per record, AOSK's producer settings: idempotent, acks=all, linger 5 ms, large
batches). No decoding, no state. It exits once ``expected`` records are acknowledged
and prints one JSON line: the monotonic time of the last acknowledgement (Linux's
monotonic clock is shared by every process, so the bench compares it with the time it
started this process), the records and the process's user+system CPU seconds.

Run as ``python -m aosk.bench.passthrough BOOTSTRAP JOURNAL SCRATCH GROUP EXPECTED``.
"""

from __future__ import annotations

import json
import os
import sys
import time


def pass_through(bootstrap: str, journal: str, scratch: str, group: str, expected: int,
                 *, timeout: float = 600) -> dict[str, float]:
    from confluent_kafka import Consumer, Producer

    from aosk.client._producer import producer_config

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                         "isolation.level": "read_committed", "enable.partition.eof": False, "log_level": 3})
    producer = Producer(producer_config(bootstrap, client_id="aosk-bench-passthrough"))
    acked = 0
    last_ack = 0.0
    failed: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        nonlocal acked, last_ack
        if err is not None:
            failed.append(str(err))
            return
        acked += 1
        last_ack = time.monotonic()

    consumer.subscribe([journal])
    deadline = time.monotonic() + timeout
    try:
        while acked < expected:
            if failed:
                raise RuntimeError(f"pass-through: the broker refused a record: {failed[0]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"pass-through: {acked} of {expected} records acknowledged after {timeout:.0f}s")
            for m in consumer.consume(10_000, timeout=0.05):
                if m.error():
                    continue
                while True:
                    try:
                        producer.produce(scratch, key=m.key(), value=m.value(), on_delivery=delivered)
                        break
                    except BufferError:
                        producer.poll(0.05)
            producer.poll(0)
        producer.flush(30)
    finally:
        consumer.close()
    t = os.times()
    return {"acked_at": last_ack, "records": acked, "cpu": t.user + t.system}


def main(argv: list[str]) -> int:
    bootstrap, journal, scratch, group, expected = argv
    print(json.dumps(pass_through(bootstrap, journal, scratch, group, int(expected))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
