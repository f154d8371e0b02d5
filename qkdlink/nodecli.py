"""The ``qkd`` commands of networked nodes: ``node``, ``link``, ``keys`` and ``certs``.

Each command is a pair ``add_X_arguments(parser)`` / ``run_X(args)`` in the style of :mod:`qkdlink.cli`, whose
``OPERATIONS`` table takes them (:data:`OPERATIONS` here lists them the same way).
"""

import json
import logging
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

# Only the module: qkdlink.cli imports this one for its table of operations, so its names are looked up when a
# command runs, not when the modules load.
from . import cli


__all__ = ["OPERATIONS", "add_node_arguments", "run_node", "add_link_arguments", "run_link_nodes",
           "add_keys_arguments", "run_keys", "add_certs_arguments", "run_certs"]


logger = logging.getLogger(__name__)

_PSK_BYTES = 1 << 20                # the pre-shared key `qkd link` makes: 256 KiB for each pad stream
_KMES = ("KME-A", "KME-B")
_SAES = ("SAE-A", "SAE-B")


def _load(path):
    from .host.node import ConfigError, load_config
    try:
        return load_config(path)
    except ConfigError as error:
        raise cli.CLIError(str(error)) from None


def _sequencer(config):
    """Alice's sequencer registers for the configuration, as the simulated (and real) sequencer defines them."""
    from .sim.sequencer import thresholds
    try:
        return thresholds(config.p_z, config.probabilities)
    except ValueError as error:
        raise cli.CLIError(f"{config.path}: [protocol]: {error}") from None


# ---------------------------------------------------------------------------------------------- qkd node

def add_node_arguments(parser):
    parser.add_argument("--config", metavar="FILE", required=True,
                        help="the node's configuration (TOML; see qkdlink.host.node.NodeConfig)")
    parser.add_argument("--role", choices=("alice", "bob"), default=None,
                        help="check that FILE configures this side (default: take the side from FILE)")
    parser.add_argument("--blocks", metavar="COUNT", type=cli._positive, default=None,
                        help="stop after COUNT blocks committed (default: run until SIGTERM or Ctrl-C)")


def run_node(args):
    from .host.node import ConfigError, Node
    config = _load(args.config)
    if args.role is not None and args.role != config.role:
        raise cli.CLIError(f"{config.path} configures {config.role}, not {args.role}")
    try:
        node = Node(config, sequencer=_sequencer(config))
    except ConfigError as error:
        raise cli.CLIError(str(error)) from None
    previous = {number: signal.signal(number, lambda *_: node.stop()) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        logger.info("%s: node up: ETSI GS QKD 014 on https://%s:%d (KME %s), board %s, peer %s:%d", config.role,
                    config.etsi_host, config.etsi_port, config.kme.kme_id, config.board_url, config.peer_host,
                    config.peer_port)
        node.run(blocks=args.blocks)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


# ---------------------------------------------------------------------------------------------- qkd link

def add_link_arguments(parser):
    parser.add_argument("--dir", metavar="DIR", required=True,
                        help="folder of the setup: written if it holds none (certificates, node configurations, "
                             "a pre-shared key), used as it is otherwise")
    parser.add_argument("--blocks", metavar="COUNT", type=cli._positive, default=None,
                        help="stop after COUNT blocks (default: run until Ctrl-C)")
    parser.add_argument("--port", metavar="PORT", type=int, default=7100,
                        help="first of six local TCP ports: the boards, the nodes' channels, Alice's and Bob's "
                             "ETSI API (default: %(default)s)")
    parser.add_argument("-d", "--distance", metavar="KM", type=float, default=0.0,
                        help="fibre length (default: %(default)s km)")
    # The simulated boards' key memory holds 2^18 bits: a block's sifted key must fit in it.
    parser.add_argument("-n", "--block-bits", metavar="BITS", type=cli._positive, default=200_000,
                        help="sifted key bits per block, about, at most 262144, for a new setup "
                             "(default: %(default)s)")
    parser.add_argument("--unit-bits", metavar="BITS", type=cli._positive, default=256,
                        help="bits in a key store unit, for a new setup (default: %(default)s)")
    cli.add_link_arguments(parser)
    # A short link with an efficient detector and a balanced basis choice gives key from blocks that fit the
    # simulated boards (32 kbit from 200 kbit sifted at the demo's eps_sec and eps_cor).
    parser.set_defaults(efficiency=0.3, p_z=0.5)


def _toml(value):
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(key)} = {_toml(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))           # a TOML basic string: JSON's escapes are TOML's
    return repr(value)


def _write_toml(path, sections):
    lines = []
    for name, values in sections.items():
        if name:
            lines.append(f"\n[{name}]")
        lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
    cli._write(path, ("\n".join(lines) + "\n").encode())


def _link_setup(directory, args):
    """Write a local link's files into ``directory``: a test PKI, both configurations, a pre-shared key."""
    from .host.certs import make_test_pki
    from .sim.boardlink import LinkTiming, frames_for
    timing = LinkTiming()
    bench = _link_bench(args)
    frames = frames_for(bench, args.block_bits, timing)
    try:
        make_test_pki(directory / "pki", _KMES, _SAES)
    except (FileExistsError, ValueError) as error:
        raise cli.CLIError(f"{directory}: {error}") from None
    psk = secrets.token_bytes(_PSK_BYTES)
    base = args.port
    bins = timing.period * timing.phases
    boards = {"alice": {"period": timing.period},
              # Photons arrive mid-slot (sim.optics): the gate takes the middle half of the slot and a bin.
              "bob": {"period_bins": float(bins), "delay": 0, "gate_start": bins // 4, "gate_width": bins // 2 + 1,
                      "dead_cycles": 0}}
    for index, role in enumerate(("alice", "bob")):
        kme, sae = _KMES[index], _SAES[index]
        cli._write(directory / f"{role}.psk", psk, secret=True)
        _write_toml(directory / f"{role}.toml", {
            "": {"role": role},
            "peer": {"host": "127.0.0.1", "port": base + 2, "km_port": base + 3},
            "board": {"url": f"socket://127.0.0.1:{base + index}", **boards[role]},
            "store": {"path": f"{role}.keys", "unit_bits": args.unit_bits},
            "auth": {"psk": f"{role}.psk"},
            "link": {"block_frames": frames},
            "protocol": {"eps_sec": args.eps_sec, "eps_cor": args.eps_cor, "intensities": list(args.intensities),
                         "probabilities": list(args.probabilities), "p_z": args.p_z},
            "etsi": {"kme_id": kme, "host": "127.0.0.1", "port": base + 4 + index, "cert": f"pki/kme-{kme}.pem",
                     "key": f"pki/kme-{kme}.key", "ca": "pki/ca.pem", "client_cert": f"pki/sae-{sae}.pem",
                     "client_key": f"pki/sae-{sae}.key", "saes": dict(zip(_SAES, _KMES))},
        })
    logger.info("wrote a new link setup in %s: blocks of %d frames (about %d sifted bits)", directory, frames,
                args.block_bits)


def _link_bench(args):
    from dataclasses import replace
    from .sim.boardlink import LinkTiming
    return replace(cli._bench(args, args.distance), slot_rate_hz=1e9 / LinkTiming().slot_ns)


def _board_port(config):
    """The port of the simulated board in ``config`` (``socket://127.0.0.1:PORT``)."""
    host, _, port = config.board_url.removeprefix("socket://").rpartition(":")
    if not config.board_url.startswith("socket://") or not port.isdigit():
        raise cli.CLIError(f"{config.path}: [board] url {config.board_url!r} is not a simulated board's "
                           f"socket://HOST:PORT; `qkd link` serves simulated boards only")
    return int(port)


def _simulate_command(args, port):
    command = [sys.executable, "-m", "qkdlink.cli", "simulate", "--model", "--port", str(port),
               "--distance", repr(args.distance), "--attenuation", repr(args.attenuation),
               "--intensities", *map(repr, args.intensities), "--probabilities", *map(repr, args.probabilities),
               "--p-z", repr(args.p_z), "--efficiency", repr(args.efficiency), "--dark-count", repr(args.dark_count),
               "--misalignment", repr(args.misalignment), "--dead-time", str(args.dead_time),
               "--afterpulse", repr(args.afterpulse)]
    return command + (["--seed", str(args.seed)] if args.seed is not None else [])


def _wait_for_line(process, prefix, timeout):
    """Wait for a line starting with ``prefix`` on ``process``'s standard output (read by a thread: a buffered
    pipe and select() do not mix)."""
    lines = queue.Queue()

    def read():
        try:
            for line in process.stdout:
                lines.put(line)
        except (OSError, ValueError):       # closed when `qkd link` ends
            pass
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            line = None
        if line is None:
            raise cli.CLIError(f"the simulated boards did not start (exit code {process.poll()}); see the messages "
                               f"above")
        if line.startswith(prefix):
            return line


def _stop(processes, timeout=15.0):
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_link_nodes(args):
    directory = Path(args.dir).resolve()
    configs = [directory / f"{role}.toml" for role in ("alice", "bob")]
    present = [path.exists() for path in configs]
    if all(present):
        logger.info("using the setup in %s (remove the folder for a fresh one)", directory)
    elif any(present):
        raise cli.CLIError(f"{directory} holds only one of alice.toml and bob.toml; remove the folder for a fresh "
                           f"setup")
    else:
        _link_setup(directory, args)
    alice, bob = (_load(path) for path in configs)
    port = _board_port(alice)
    if port != args.port:
        logger.info("the setup's boards are on ports %d and %d (not --port %d)", port, port + 1, args.port)
    processes = []
    try:
        simulate = subprocess.Popen(_simulate_command(args, port), stdout=subprocess.PIPE, text=True)
        processes.append(simulate)
        _wait_for_line(simulate, "Bob:", timeout=60.0)
        blocks = [] if args.blocks is None else ["--blocks", str(args.blocks)]
        nodes = {config.role: subprocess.Popen([sys.executable, "-m", "qkdlink.cli", "-L",
                                                str(directory / f"{config.role}.log"), "node", "--config",
                                                str(config.path), *blocks])
                 for config in (alice, bob)}
        processes += nodes.values()
        for config in (alice, bob):
            print(f"{config.role}: ETSI GS QKD 014 API at https://{config.etsi_host}:{config.etsi_port} "
                  f"(KME {config.kme.kme_id}); its SAE: {config.client_cert} with {config.client_key}; CA "
                  f"{config.etsi_ca}", flush=True)
        print(f"keys: qkd keys get --config {alice.path} --number 1, then qkd keys get --config {bob.path} --id "
              f"KEY_ID; logs in {directory}/alice.log and bob.log; Ctrl-C stops", flush=True)
        while True:
            codes = {role: process.poll() for role, process in nodes.items()}
            failed = [role for role, code in codes.items() if code not in (None, 0)]
            if failed:
                raise cli.CLIError(f"the {' and '.join(failed)} node stopped with an error; see its log in "
                                   f"{directory}")
            if all(code == 0 for code in codes.values()):
                logger.info("both nodes stopped after %d block(s)", args.blocks or 0)
                return
            if simulate.poll() is not None:
                raise cli.CLIError(f"the simulated boards stopped (exit code {simulate.returncode})")
            time.sleep(0.2)
    except KeyboardInterrupt:
        logger.info("stopping the nodes and the boards")
    finally:
        _stop(processes[1:])            # the nodes first, so that they end cleanly with their boards up
        _stop(processes[:1])
        if processes:
            processes[0].stdout.close()


# ---------------------------------------------------------------------------------------------- qkd keys

def add_keys_arguments(parser):
    commands = parser.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    status = commands.add_parser("status", help="what a key store holds, and the authentication cost",
                                 formatter_class=cli.TextHelpFormatter)
    where = status.add_mutually_exclusive_group(required=True)
    where.add_argument("--store", metavar="FILE", help="the key store")
    where.add_argument("--config", metavar="FILE", help="a node's configuration, for its key store")
    get = commands.add_parser("get", help="fetch keys from a node's ETSI GS QKD 014 API as an SAE",
                              formatter_class=cli.TextHelpFormatter)
    get.add_argument("--config", metavar="FILE", required=True,
                     help="the configuration of the node (KME) to ask: its address, its CA and its SAE's "
                          "certificate")
    what = get.add_mutually_exclusive_group(required=True)
    what.add_argument("--number", metavar="N", type=cli._positive,
                      help="master side: N new keys (enc_keys)")
    what.add_argument("--id", metavar="UUID", action="append", dest="key_ids",
                      help="slave side: the key with this key_ID (dec_keys); give it more than once for more")
    get.add_argument("--size", metavar="BITS", type=cli._positive, default=None,
                     help="with --number: bits in each key, a multiple of 8 (default: the KME's key size)")
    get.add_argument("--slave", metavar="SAE", default=None,
                     help="with --number: the SAE to share the keys with (default: the peer KME's one SAE)")
    get.add_argument("--master", metavar="SAE", default=None,
                     help="with --id: the SAE that took the keys (default: the peer KME's one SAE)")
    get.add_argument("--cert", metavar="FILE", default=None,
                     help="the SAE's client certificate (default: [etsi] client_cert of the configuration)")
    get.add_argument("--key", metavar="FILE", default=None,
                     help="its private key (default: [etsi] client_key)")
    get.add_argument("--format", choices=("hex", "base64", "raw"), default="hex",
                     help="hex or base64: a line 'KEY_ID KEY' per key; raw: the keys' bytes one after the other "
                          "(default: %(default)s)")
    get.add_argument("-o", "--output", metavar="FILE", default=None,
                     help="write the keys to FILE (written whole, readable by its owner only) instead of "
                          "standard output")


def run_keys(args):
    if args.keys_command == "status":
        return _keys_status(args)
    return _keys_get(args)


def _keys_status(args):
    from .host.keystore import KeyStore, KeyStoreError
    from .host.node import PAD_STREAMS, NodeState
    path = Path(args.store) if args.store else _load(args.config).store_path
    try:
        with KeyStore(path, unit_bits=None) as store:
            status, accounting = store.status(), store.accounting()
    except KeyStoreError as error:
        raise cli.CLIError(str(error)) from None
    psk = 0
    state_path = path.with_name(path.name + ".node")
    if state_path.is_file():
        with NodeState(state_path) as state:
            psk = (state.get("psk") or {}).get("bytes", 0)
    produced = accounting["key_bytes_produced"]
    print(f"key store {path}: {status['unit_bits']}-bit units")
    print(f"  ready      {status['ready']:>10,} units ({status['ready_bits']:,} bits) in "
          f"{status['ready_blocks']:,} block(s)")
    print(f"  assigned   {status['assigned']:>10,} units (to SAEs, not yet fetched)")
    print(f"  delivered  {status['delivered']:>10,} units (handed out and erased)")
    print(f"  pending    {status['pending']:>10,} units in {status['pending_blocks']} block(s) not yet committed")
    print(f"  key stored: {produced:,} bytes; discarded (blocks never committed): "
          f"{accounting['key_bytes_discarded']:,} bytes")
    print(f"  authentication pad {'added':>12} {'consumed':>12} {'available':>12}")
    streams = accounting["auth"]
    for stream in [name for name in PAD_STREAMS if name in streams] + sorted(set(streams) - set(PAD_STREAMS)):
        values = streams[stream]
        print(f"    {stream:<16} {values['added']:>12,} {values['consumed']:>12,} {values['available']:>12,}")
    added = sum(values["added"] for values in streams.values())
    consumed = sum(values["consumed"] for values in streams.values())
    distilled = produced + max(added - psk, 0)
    ratio = f"{100 * consumed / distilled:.1f} %" if distilled else "no key distilled yet"
    print(f"  authentication cost: {consumed:,} pad bytes consumed for {distilled:,} bytes of key distilled "
          f"({produced:,} stored, {max(added - psk, 0):,} refilled the pads; pre-shared {psk:,}): {ratio}")


def _other_sae(config, given, what):
    if given is not None:
        return given
    saes = config.saes_of(config.peer_kme) if config.peer_kme else []
    if len(saes) != 1:
        raise cli.CLIError(f"give --{what}: the peer KME serves {len(saes)} SAEs ({', '.join(saes) or 'none'})")
    return saes[0]


def _keys_get(args):
    import base64
    from .host.etsi014 import DeliveryError, KeyDeliveryClient
    config = _load(args.config)
    cert = Path(args.cert) if args.cert else config.client_cert
    key = Path(args.key) if args.key else config.client_key
    if cert is None or key is None:
        raise cli.CLIError(f"give --cert and --key, or [etsi] client_cert and client_key in {config.path}")
    for path in (cert, key):
        if not path.is_file():
            raise cli.CLIError(f"{path} does not exist")
    if args.number is not None and (args.master is not None):
        raise cli.CLIError("--master goes with --id (the slave side); with --number give --slave")
    if args.key_ids is not None and (args.slave is not None or args.size is not None):
        raise cli.CLIError("--slave and --size go with --number (the master side)")
    host = "127.0.0.1" if config.etsi_host in ("0.0.0.0", "::", "") else config.etsi_host
    try:
        with KeyDeliveryClient(host, config.etsi_port, certfile=cert, keyfile=key, cafile=config.etsi_ca) as client:
            if args.number is not None:
                slave = _other_sae(config, args.slave, "slave")
                keys = client.enc_keys(slave, args.number, args.size)
            else:
                try:
                    ids = [uuid.UUID(text) for text in args.key_ids]
                except ValueError as error:
                    raise cli.CLIError(f"--id: {error}: a key_ID is a UUID") from None
                keys = client.dec_keys(_other_sae(config, args.master, "master"), ids)
    except DeliveryError as error:
        raise cli.CLIError(f"the KME refused: {error}") from None
    except OSError as error:            # ssl.SSLError, refused connections
        raise cli.CLIError(f"cannot reach the KME at https://{host}:{config.etsi_port}: {error}") from None
    if args.format == "raw":
        data = b"".join(value for _, value in keys)
    else:
        encode = bytes.hex if args.format == "hex" else (lambda value: base64.b64encode(value).decode())
        data = "".join(f"{key_id} {encode(value)}\n" for key_id, value in keys).encode()
    if args.output is not None:
        cli._write(args.output, data, secret=True)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    logger.info("%d key(s) of %d bits: %s%s", len(keys), 8 * len(keys[0][1]) if keys else 0,
                " ".join(str(key_id) for key_id, _ in keys), f"; written to {args.output}" if args.output else "")


# --------------------------------------------------------------------------------------------- qkd certs

def add_certs_arguments(parser):
    parser.add_argument("--dir", metavar="DIR", required=True, help="folder for the certificates and keys")
    parser.add_argument("--kme", metavar="ID", nargs="+", default=[],
                        help="KME IDs: a server certificate for each")
    parser.add_argument("--sae", metavar="ID", nargs="+", default=[],
                        help="SAE IDs: a client certificate for each (its common name is the SAE ID)")
    parser.add_argument("--host", metavar="HOST", nargs="+", default=["localhost", "127.0.0.1"],
                        help="names and addresses the KME certificates are valid for (default: %(default)s)")
    parser.add_argument("--days", metavar="DAYS", type=cli._positive, default=365,
                        help="validity of the certificates (default: %(default)s days)")
    parser.add_argument("--force", action="store_true", help="replace existing files")


def run_certs(args):
    from .host.certs import make_test_pki
    try:
        pki = make_test_pki(args.dir, args.kme, args.sae, hosts=args.host, days=args.days, overwrite=args.force)
    except (FileExistsError, ValueError) as error:
        raise cli.CLIError(str(error)) from None
    except OSError as error:
        raise cli.CLIError(f"cannot write to {args.dir}: {error.strerror}") from None
    print(f"CA: {pki.ca_cert} (its key: {pki.ca_key})")
    for kind, pairs in (("KME", pki.kmes), ("SAE", pki.saes)):
        for name, (cert, key) in pairs.items():
            print(f"{kind} {name}: {cert} with {key}")
    logger.info("a test PKI: give every KME and SAE the CA certificate; a real deployment takes its certificates "
                "from the operator's CA")


# -------------------------------------------------------------------------------------------------- main

OPERATIONS = {
    "node":  ("run one side of a QKD link: its board, the channel to the peer, the key store and key delivery",
              add_node_arguments, run_node),
    "link":  ("run a local link: simulated boards and both nodes, with certificates and a pre-shared key",
              add_link_arguments, run_link_nodes),
    "keys":  ("a key store's status; fetch keys through a node's ETSI GS QKD 014 API",
              add_keys_arguments, run_keys),
    "certs": ("make a test CA and certificates for KMEs and SAEs",
              add_certs_arguments, run_certs),
}
