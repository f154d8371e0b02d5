"""Key delivery API: requests per second and latency at 1, 10 and 100 concurrent clients on loopback.

    python -m bench.etsi014 [--seconds 2] [--clients 1 10 100] [--store-units 40000]

Every client is an SAE with its own certificate and one kept-alive HTTPS connection (TLS 1.3, mutual
authentication; the handshake is made before the clock starts), sending requests one after another for
``--seconds``. Rows:

- baseline: a plain HTTPS server on the same stack (``KeyDeliveryServer``'s threads and mutual TLS) that answers
  every request with a constant JSON object, without parsing or checking anything;
- status: ``GET /api/v1/keys/{slave}/status``;
- enc_keys (memory): ``POST .../enc_keys`` for one 256-bit key, from an in-memory key source (OS random bytes):
  the API's own cost;
- enc_keys (key store): the same from :class:`StoreDelivery` on real key stores: Alice's store assigns and takes
  the units (erasing them), Bob's records the assignment in its key index and store (called in-process, as the
  node's notification would be), every step an fsync'd SQLite transaction.

The servers run in a child process and the clients in this one, so they share the machine's cores.
"""

import argparse
import http.client
import http.server
import json
import multiprocessing
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from bench.machine import describe
from qkdlink.host.certs import make_test_pki
from qkdlink.host.etsi014 import KeyDelivery, KeyDeliveryServer, KeyIndex, KMEConfig, StoreDelivery, client_context
from qkdlink.host.keystore import KeyStore


SLAVE = "sae-bob"
CONSTANT = json.dumps({"message": "hello"}).encode()


class _MemoryDelivery(KeyDelivery):
    def status(self, master_sae, slave_sae):
        return {"stored_key_count": 1000}

    def enc_keys(self, master_sae, slave_sae, number, size):
        return [(uuid.uuid4(), os.urandom(size // 8)) for _ in range(number)]


class _ConstantHandler(http.server.BaseHTTPRequestHandler):
    """The baseline: read the request, answer a constant JSON object."""
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(CONSTANT)))
        self.end_headers()
        self.wfile.write(CONSTANT)

    do_GET = do_POST = _answer

    def log_message(self, format, *args):
        pass


def _serve(connection, directory, masters, store_units):
    """The child process: the three servers, until told to stop."""
    files = dict(certfile=directory / "kme-kme-alice.pem", keyfile=directory / "kme-kme-alice.key",
                 cafile=directory / "ca.pem")
    saes = {**{sae: "kme-alice" for sae in masters}, SLAVE: "kme-bob"}
    config = KMEConfig("kme-alice", saes, max_key_per_request=16)

    alice_store = KeyStore(directory / "alice.keys")
    bob_store = KeyStore(directory / "bob.keys")
    for start in range(0, store_units, 1000):
        block, units = uuid.uuid4(), [uuid.uuid4() for _ in range(min(1000, store_units - start))]
        key = os.urandom(len(units) * 32)
        for store in (alice_store, bob_store):
            store.store_block(block, key, units, {})
            store.commit_block(block)
    bob = StoreDelivery(bob_store, KeyIndex(directory / "bob.index"))
    alice = StoreDelivery(alice_store, KeyIndex(directory / "alice.index"), notify=bob.record)

    baseline = KeyDeliveryServer(config, _MemoryDelivery(), **files)
    baseline.RequestHandlerClass = _ConstantHandler            # same threads and TLS, no API
    servers = {"baseline": baseline,
               "memory": KeyDeliveryServer(config, _MemoryDelivery(), **files),
               "store": KeyDeliveryServer(config, alice, **files)}
    for server in servers.values():
        server.start()
    connection.send({name: server.address for name, server in servers.items()})
    connection.recv()
    for server in servers.values():
        server.close()
    alice_store.close()
    bob_store.close()


def _run(address, contexts, method, path, body, seconds):
    """``len(contexts)`` clients, each on its own connection, for ``seconds``: (latencies, errors, elapsed)."""
    connections = [http.client.HTTPSConnection(*address, timeout=30, context=context) for context in contexts]
    for connection in connections:                      # handshake (and warm up) before the clock starts
        connection.request("GET", f"/api/v1/keys/{SLAVE}/status")
        connection.getresponse().read()
    latencies = [[] for _ in connections]
    errors = [0] * len(connections)
    start = threading.Barrier(len(connections) + 1)
    deadline = [0.0]

    def client(index):
        connection, mine = connections[index], latencies[index]
        headers = {"Content-Type": "application/json"} if body else {}
        start.wait()
        while time.perf_counter() < deadline[0]:
            sent = time.perf_counter()
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            mine.append(time.perf_counter() - sent)
            if response.status != 200:
                errors[index] += 1

    threads = [threading.Thread(target=client, args=(index,)) for index in range(len(connections))]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    deadline[0] = began + seconds
    start.wait()
    for thread in threads:
        thread.join(seconds + 60)
    elapsed = time.perf_counter() - began
    for connection in connections:
        connection.close()
    return np.concatenate([np.array(mine) for mine in latencies]), sum(errors), elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each measurement (default: "
                                                                   "%(default)s)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 10, 100],
                        help="concurrent clients (default: %(default)s)")
    parser.add_argument("--store-units", type=int, default=40_000,
                        help="256-bit units preloaded in the key stores (default: %(default)s)")
    args = parser.parse_args()
    if min(args.clients) < 1 or args.seconds <= 0:
        parser.error("--clients and --seconds must be positive")

    masters = [f"sae-alice-{index}" for index in range(max(args.clients))]
    with tempfile.TemporaryDirectory(prefix="bench-etsi014-") as directory:
        directory = Path(directory)
        make_test_pki(directory, ["kme-alice"], masters)
        contexts = [client_context(directory / f"sae-{sae}.pem", directory / f"sae-{sae}.key",
                                   directory / "ca.pem") for sae in masters]
        context = multiprocessing.get_context("fork")
        connection, child = context.Pipe()
        process = context.Process(target=_serve, args=(child, directory, masters, args.store_units))
        process.start()
        addresses = connection.recv()

        print(f"machine: {describe()}")
        print(f"{args.seconds:g} s a measurement; one kept-alive mutual-TLS connection a client; servers in one "
              f"process, clients in another")
        print()
        print("| request | clients | requests/s | p50 latency (ms) | p99 latency (ms) | errors |")
        print("|---|---:|---:|---:|---:|---:|")
        enc = json.dumps({"number": 1, "size": 256}).encode()
        rows = [("baseline (constant JSON)", "baseline", "GET", f"/api/v1/keys/{SLAVE}/status", None),
                ("status", "memory", "GET", f"/api/v1/keys/{SLAVE}/status", None),
                ("enc_keys, 1 x 256 bits (memory)", "memory", "POST", f"/api/v1/keys/{SLAVE}/enc_keys", enc),
                ("enc_keys, 1 x 256 bits (key store)", "store", "POST", f"/api/v1/keys/{SLAVE}/enc_keys", enc)]
        try:
            for name, server, method, path, body in rows:
                for clients in args.clients:
                    latencies, errors, elapsed = _run(addresses[server], contexts[:clients], method, path, body,
                                                      args.seconds)
                    p50, p99 = np.percentile(latencies, [50, 99]) * 1e3
                    print(f"| {name} | {clients} | {len(latencies) / elapsed:,.0f} | {p50:.2f} | {p99:.2f} | "
                          f"{errors} |", flush=True)
        finally:
            connection.send("stop")
            process.join(60)


if __name__ == "__main__":
    main()
