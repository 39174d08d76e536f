"""Reference publishers the simulator benchmark compares against, run as their own processes.

    python bench/simulator_references.py sdk HOST PORT CA CERT KEY TOPIC PAYLOAD_FILE QOS WINDOW

`sdk`: a bare AWSIoTPythonSDK `publishAsync` loop; QoS 1 keeps a window released in the ack
callback, QoS 0 caps the SDK's unsent backlog (without either it collapses or eats memory). It
prints `published N in S s` on stdout when every message is acknowledged (QoS 1) or written.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path


def sdk_loop(argv: list[str]) -> None:
    from AWSIoTPythonSDK.MQTTLib import AWSIoTMQTTClient

    host, port, ca, cert, key, topic, payload_file, qos_text, window_text = argv
    qos, window = int(qos_text), int(window_text)
    payloads = Path(payload_file).read_bytes().splitlines()
    logging.getLogger("AWSIoTPythonSDK").setLevel(logging.ERROR)
    client = AWSIoTMQTTClient("bench-sdk-reference")
    client.configureEndpoint(host, int(port))
    client.configureCredentials(ca, key, cert)
    client.configureOfflinePublishQueueing(0)
    client.connect(60)
    slots = threading.Semaphore(window)
    done = threading.Event()
    acked = [0]
    lock = threading.Lock()

    def on_ack(mid: int, data: object = None) -> None:
        slots.release()
        with lock:
            acked[0] += 1
            if acked[0] == len(payloads):
                done.set()

    backlog = client._mqtt_core._internal_async_client._paho_client._out_packet
    started = time.monotonic()
    for payload in payloads:
        if qos == 1:
            slots.acquire()
            client.publishAsync(topic, payload, 1, ackCallback=on_ack)
        else:
            while len(backlog) >= 1_000:
                time.sleep(0.0005)
            client.publishAsync(topic, payload, 0)
    if qos == 1:
        done.wait(120)
    else:
        while backlog:
            time.sleep(0.001)
    elapsed = time.monotonic() - started
    print(f"published {len(payloads)} in {elapsed:.3f} s", flush=True)
    client.disconnect()


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "sdk":
        sys.exit(__doc__)
    sdk_loop(sys.argv[2:])
