"""The ``qkd`` command: one entry point to qkdlink's host, simulation and board tools."""

import argparse
import hashlib
import logging
import os
import platform
import secrets
import sys
import tempfile
import textwrap
import time
from importlib import metadata
from pathlib import Path


logger = logging.getLogger("qkdlink")


class CLIError(Exception):
    """A mistake in what the user asked for: reported in one line, without a traceback."""


class TextHelpFormatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, width=min(100, max(60, os.get_terminal_size(2).columns
                                                  if os.isatty(2) else 100)))


def _version():
    try:
        return metadata.version("qkdlink")
    except metadata.PackageNotFoundError:
        return "unknown"


def _positive(text):
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, not {value}")
    return value


# ---------------------------------------------------------------------------------------------- files

def _read(path, what):
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CLIError(f"{what} file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise CLIError(f"{what} file {str(path)!r} is a directory") from None
    except OSError as error:
        raise CLIError(f"cannot read {what} file {str(path)!r}: {error.strerror}") from None


def _write(path, data, *, secret=False):
    """Write ``data`` to ``path`` whole or not at all: a temporary file beside it, then a rename.

    A ``secret`` file (key material) is readable by its owner only; others follow the umask.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if not secret:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(file.name, 0o666 & ~umask)
        os.replace(file.name, path)
    except OSError as error:
        raise CLIError(f"cannot write {str(path)!r}: {error.strerror}") from None


def _fingerprint(data):
    """A short public fingerprint of secret bits: safe to show, useless to an attacker (SHA-256, 64 bits)."""
    return hashlib.sha256(data).hexdigest()[:16]


class _Progress:
    """A one-line progress display on standard error, shown only on a terminal."""

    def __init__(self, total, action, item):
        self.total = total
        self.action = action
        self.item = item
        self.shown = sys.stderr.isatty()
        self.start = time.monotonic()

    def __call__(self, done):
        if self.shown:
            elapsed = time.monotonic() - self.start
            print(f"\r{self.action}: {done}/{self.total} {self.item} ({100 * done / self.total:.0f} %, "
                  f"{elapsed:.1f} s)", end="", file=sys.stderr, flush=True)

    def close(self):
        if self.shown:
            print(file=sys.stderr)


# ---------------------------------------------------------------------------------------------- qkd random

def add_random_arguments(parser):
    parser.add_argument("bits", metavar="BITS", type=_positive,
                        help="number of random bits")
    parser.add_argument("-o", "--output", metavar="FILE", required=True,
                        help="file to write the bits to, packed least significant bit first")


def run_random(args):
    data = bytearray(secrets.token_bytes((args.bits + 7) // 8))
    if args.bits % 8:
        data[-1] &= (1 << (args.bits % 8)) - 1            # padding bits are zero, as docs/bit-order.md says
    _write(args.output, bytes(data), secret=True)
    logger.info("wrote %d random bits from the operating system's entropy source to %s", args.bits, args.output)


# ---------------------------------------------------------------------------------------------- qkd pa

def add_pa_arguments(parser):
    parser.add_argument("key", metavar="KEY",
                        help="file holding the key to compress, packed least significant bit first")
    parser.add_argument("-s", "--seed", metavar="FILE", required=True,
                        help="file holding the seed: exactly n+m-1 bits (n-1 with --modified), zero-padded "
                             "to whole bytes; `qkd random` makes one")
    parser.add_argument("-m", "--output-bits", metavar="BITS", type=_positive, required=True,
                        help="length m of the hashed key, at most the key length")
    parser.add_argument("-o", "--output", metavar="FILE", required=True,
                        help="file to write the hashed key to")
    parser.add_argument("-n", "--key-bits", metavar="BITS", type=_positive, default=None,
                        help="use only the first BITS bits of the key file (default: all of it)")
    parser.add_argument("--modified", action="store_true",
                        help="use the modified Toeplitz matrix (T'|I) of Hayashi and Tsurumaru, whose seed "
                             "is n-1 bits")
    engine = parser.add_argument_group("gateware")
    engine.add_argument("--gateware", action="store_true",
                        help="hash with the gateware core in the Amaranth simulator instead of the host code")
    engine.add_argument("--check", action="store_true",
                        help="with --gateware, also hash with the host code and fail unless both agree")
    engine.add_argument("--width", metavar="BITS", type=_positive, default=8,
                        help="key bits per clock cycle of the simulated core (default: %(default)s)")
    engine.add_argument("--accumulator", metavar="BITS", type=_positive, default=256,
                        help="output bits per pass of the simulated core (default: %(default)s)")


def run_pa(args):
    from .host.bits import pack_bits, unpack_bits
    from .host.toeplitz import modified_toeplitz_hash, toeplitz_hash

    key_data = _read(args.key, "key")
    seed_data = _read(args.seed, "seed")
    n = 8 * len(key_data) if args.key_bits is None else args.key_bits
    m = args.output_bits
    if n == 0:
        raise CLIError(f"key file {args.key!r} is empty")
    if n > 8 * len(key_data):
        raise CLIError(f"--key-bits {n} asks for more bits than key file {args.key!r} holds "
                       f"({8 * len(key_data)})")
    if m > n:
        raise CLIError(f"--output-bits {m} is more than the {n} key bits: privacy amplification only "
                       f"shortens a key")
    if args.modified and args.gateware:
        raise CLIError("the gateware core computes the plain Toeplitz hash; drop --modified or --gateware")
    if args.check and not args.gateware:
        raise CLIError("--check compares the gateware with the host code; it needs --gateware")
    seed_bits = n - 1 if args.modified else n + m - 1
    if len(seed_data) != (seed_bits + 7) // 8:
        raise CLIError(f"seed file {args.seed!r} holds {len(seed_data)} bytes, but hashing {n} bits to {m} "
                       f"bits needs a seed of {seed_bits} bits, that is {(seed_bits + 7) // 8} bytes; "
                       f"make one with `qkd random {seed_bits} -o FILE`")
    if seed_bits % 8 and seed_data[-1] >> (seed_bits % 8):
        raise CLIError(f"seed file {args.seed!r} has bits set past the {seed_bits} that hashing {n} bits to "
                       f"{m} bits needs: it was made for other lengths")
    key = unpack_bits(key_data, n)
    seed = unpack_bits(seed_data, seed_bits)

    if not args.gateware:
        started = time.perf_counter()
        hashed = (modified_toeplitz_hash if args.modified else toeplitz_hash)(key, seed, m)
        logger.info("host: hashed %d bits to %d bits in %.3f s", n, m, time.perf_counter() - started)
    else:
        hashed = _pa_gateware(args, key, seed, m)
        if args.check:
            reference = toeplitz_hash(key, seed, m)
            if (reference != hashed).any():
                raise CLIError(f"the gateware and the host hash differ in {int((reference != hashed).sum())} "
                               f"of {m} bits")
            logger.info("gateware and host hash agree: %d bits, fingerprint %s", m,
                        _fingerprint(pack_bits(hashed)))
    output = pack_bits(hashed)
    _write(args.output, output, secret=True)
    logger.info("wrote %d hashed bits to %s (fingerprint %s)", m, args.output, _fingerprint(output))


def _pa_gateware(args, key, seed, m):
    from .sim.toeplitz import hash_blocks, key_beats, passes

    width, accumulator = args.width, args.accumulator
    if width & (width - 1):
        raise CLIError(f"--width must be a power of two, not {width}")
    if accumulator % width:
        raise CLIError(f"--accumulator must be a multiple of --width {width}, not {accumulator}")
    total = passes(m, accumulator) * len(key_beats(key, width))
    progress = _Progress(total, "simulating the Toeplitz core", "key beats")
    started = time.perf_counter()
    try:
        [(hashed, _)] = hash_blocks([(key, seed, m)], width=width, accumulator=accumulator,
                                    progress=progress)
    finally:
        progress.close()
    logger.info("gateware (simulated, W=%d, A=%d): hashed %d bits to %d bits in %d passes, %.1f s",
                width, accumulator, key.size, m, passes(m, accumulator), time.perf_counter() - started)
    return hashed


# ---------------------------------------------------------------------------------------------- qkd demo

# The link the demo simulates unless told otherwise: Lim et al.'s receiver and fibre, and a source setting that
# gives key from blocks of 10^6 sifted bits at 25 km (found by a search over Lim's channel model; Lim et al.
# optimise per distance and block size). Dead time and afterpulsing are off by default, as in Lim et al.'s model:
# afterpulses land in slots of every intensity and eat into the decoy bounds (try --afterpulse 0.04).
DEMO_INTENSITIES = (0.6, 0.2, 2e-4)
DEMO_PROBABILITIES = (0.5, 0.3, 0.2)
DEMO_P_Z = 0.8


def add_link_arguments(parser):
    """Options that describe a simulated link (shared by ``demo`` and ``sweep``)."""
    from .sim.optics import Receiver
    receiver = Receiver()
    link = parser.add_argument_group("link (defaults: Lim et al., PRA 89 022307, 2014)")
    link.add_argument("--attenuation", metavar="DB_PER_KM", type=float, default=0.2,
                      help="fibre attenuation (default: %(default)s dB/km)")
    link.add_argument("--intensities", metavar="MU", type=float, nargs=3, default=DEMO_INTENSITIES,
                      help="signal, decoy and weakest mean photon numbers (default: %(default)s)")
    link.add_argument("--probabilities", metavar="P", type=float, nargs=3, default=DEMO_PROBABILITIES,
                      help="probabilities of the three intensities (default: %(default)s)")
    link.add_argument("--p-z", metavar="P", type=float, default=DEMO_P_Z,
                      help="probability of the Z (key) basis at Alice and at Bob's splitter "
                           "(default: %(default)s)")
    link.add_argument("--efficiency", metavar="ETA", type=float, default=receiver.efficiency,
                      help="Bob's detection efficiency (default: %(default)s)")
    link.add_argument("--dark-count", metavar="P", type=float, default=receiver.dark_count,
                      help="dark-count probability per detector and slot (default: %(default)s)")
    link.add_argument("--misalignment", metavar="E", type=float, default=receiver.misalignment,
                      help="optical misalignment error (default: %(default)s)")
    link.add_argument("--dead-time", metavar="SLOTS", type=int, default=0,
                      help="detector dead time (default: %(default)s slots)")
    link.add_argument("--afterpulse", metavar="P", type=float, default=0.0,
                      help="afterpulse probability per click (default: %(default)s)")
    link.add_argument("--eps-sec", metavar="EPS", type=float, default=1e-10,
                      help="secrecy parameter of the finite-key bound (default: %(default)s)")
    link.add_argument("--eps-cor", metavar="EPS", type=float, default=1e-15,
                      help="correctness parameter: verification hash collision bound (default: %(default)s)")
    link.add_argument("--seed", metavar="SEED", type=int, default=None,
                      help="seed the simulation for a reproducible run (default: a fresh one, printed)")


def _bench(args, distance, eavesdropper=None):
    from .sim.optics import Fibre, OpticalBench, Receiver, Source
    try:
        return OpticalBench(
            source=Source(intensities=tuple(args.intensities), probabilities=tuple(args.probabilities),
                          p_z=args.p_z),
            fibre=Fibre(length_km=distance, attenuation_db_per_km=args.attenuation),
            receiver=Receiver(p_z=args.p_z, efficiency=args.efficiency, dark_count=args.dark_count,
                              misalignment=args.misalignment, dead_time=args.dead_time,
                              afterpulse=args.afterpulse),
            eavesdropper=eavesdropper)
    except ValueError as error:
        raise CLIError(str(error)) from None


def _settings(args):
    from .host.finite_key import DecoySettings
    from .host.protocol import ProtocolSettings
    try:
        return ProtocolSettings(DecoySettings(tuple(args.intensities), tuple(args.probabilities)),
                                eps_sec=args.eps_sec, eps_cor=args.eps_cor)
    except ValueError as error:
        raise CLIError(str(error)) from None


def _simulation_seed(args):
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    logger.info("simulation seed %d (rerun with --seed %d to reproduce; simulated randomness is not for real "
                "keys)", seed, seed)
    return seed


def _reference_rates(bench):
    """(asymptotic decoy-state rate, PLOB bound) per pulse for the bench's channel."""
    from .host.finite_key import asymptotic_rate, plob_bound
    from .sim.optics import transmittance
    channel = transmittance(bench.fibre)
    asymptotic = asymptotic_rate(channel * bench.receiver.efficiency, dark_count=2 * bench.receiver.dark_count,
                                 misalignment=bench.receiver.misalignment,
                                 intensity=bench.source.intensities[0], p_z=bench.source.p_z)
    return asymptotic, plob_bound(channel)


def add_demo_arguments(parser):
    parser.add_argument("-d", "--distance", metavar="KM", type=float, default=25.0,
                        help="fibre length (default: %(default)s km)")
    parser.add_argument("-n", "--block-bits", metavar="BITS", type=_positive, default=10**6,
                        help="sifted key bits per block, about (default: %(default)s)")
    parser.add_argument("-b", "--blocks", metavar="COUNT", type=_positive, default=1,
                        help="number of blocks (default: %(default)s)")
    parser.add_argument("--eve", choices=("none", "intercept-resend", "pns"), default="none",
                        help="eavesdropper on the quantum channel (default: %(default)s)")
    parser.add_argument("--eve-fraction", metavar="F", type=float, default=1.0,
                        help="fraction of pulses Eve intercepts and resends (default: %(default)s)")
    parser.add_argument("-o", "--output", metavar="DIR", default="build/link",
                        help="folder for the key files alice.key, bob.key and their figures "
                             "(default: %(default)s)")
    parser.add_argument("--boards", choices=("none", "model", "rtl"), default="none",
                        help="run the capture path on simulated boards over the wire protocol: 'model' (the "
                             "gateware's Python models) or 'rtl' (the gateware itself under Verilator); 'none' "
                             "simulates the slots directly, fastest (default: %(default)s)")
    parser.add_argument("--rtl", dest="boards", action="store_const", const="rtl",
                        help="short for --boards rtl")
    add_link_arguments(parser)


def _eavesdropper(args):
    from .sim.optics import InterceptResend, PhotonNumberSplitting
    try:
        match args.eve:
            case "intercept-resend":
                return InterceptResend(fraction=args.eve_fraction)
            case "pns":
                return PhotonNumberSplitting()
    except ValueError as error:
        raise CLIError(str(error)) from None
    return None


def _print_block(block, pulses, asymptotic, plob):
    alice, bob = block.alice, block.bob
    figures = bob.figures if "counts" in bob.figures else alice.figures
    print(f"block {alice.block}: {pulses:,} pulses, {figures.get('detections', 0):,} detections")
    counts = figures.get("counts")
    if counts is not None:
        print(f"  {'':24}{'signal':>12}{'decoy':>12}{'weakest':>12}")
        for name, values in (("Z basis (raw key)", counts.n_z), ("X basis (test)", counts.n_x),
                             ("X basis errors", counts.m_x)):
            print(f"  {name:24}" + "".join(f"{int(value):>12,}" for value in values))
    if "qber_z" in bob.figures:
        print(f"  QBER: Z {100 * bob.figures['qber_z']:.2f} % (corrected by Cascade), "
              f"X {100 * bob.figures['qber_x']:.2f} %")
    elif "qber_x" in figures:
        print(f"  QBER: X {100 * figures['qber_x']:.2f} %")
    finite = bob.figures.get("finite_key")
    if finite is not None:
        print(f"  decoy bounds: s_Z0 >= {finite.s_z0:,.0f}, s_Z1 >= {finite.s_z1:,.0f}, "
              f"phase error phi_Z <= {100 * finite.phi_z:.2f} %")
        from .host.finite_key import binary_entropy
        n = sum(counts.n_z)
        qber = bob.figures["qber_z"]
        efficiency = finite.leak_ec / (n * binary_entropy(qber)) if 0 < qber < 0.5 else float("nan")
        print(f"  reconciliation: {finite.leak_ec:,} bits leaked in {bob.figures['round_trips']} round trips, "
              f"f = {efficiency:.3f}")
    if block.keys_equal:
        from .host.bits import pack_bits
        rate = alice.figures["secret_bits"] / pulses
        print(f"  secret key: {alice.figures['secret_bits']:,} bits, {rate:.3e} per pulse "
              f"(asymptotic decoy-state rate {asymptotic:.3e}, PLOB bound {plob:.3e})")
        print(f"  Alice's and Bob's keys are equal: fingerprint {_fingerprint(pack_bits(alice.key))}")
        print(f"  authentication: {8 * block.pad_bytes:,} bits of one-time pad for the Wegman-Carter tags, "
              f"{100 * 8 * block.pad_bytes / alice.figures['secret_bits']:.1f} % of the key")
    else:
        reason = alice.abort_reason or bob.abort_reason
        print(f"  aborted, no key: {reason}")
        print(f"  authentication: {8 * block.pad_bytes:,} bits of one-time pad for the Wegman-Carter tags")


def _write_keys(directory, blocks):
    """Each side's keys, block after block, and a JSON file of every block's figures."""
    import json
    from .host.bits import pack_bits
    for side in ("alice", "bob"):
        data = bytearray()
        records = []
        for block in blocks:
            result = getattr(block, side)
            record = {"block": result.block, "aborted": result.aborted, "abort_reason": result.abort_reason}
            finite = result.figures.get("finite_key")
            counts = result.figures.get("counts")
            if counts is not None:
                record.update(n_z=list(counts.n_z), n_x=list(counts.n_x), m_x=list(counts.m_x))
            for name in ("pulses", "detections", "qber_x", "qber_z", "round_trips", "leaked_bits"):
                if name in result.figures:
                    record[name] = result.figures[name]
            if finite is not None:
                record.update(s_z0=finite.s_z0, s_z1=finite.s_z1, phi_z=finite.phi_z,
                              eps_sec=finite.eps_sec, eps_cor=finite.eps_cor)
            if not result.aborted:
                packed = pack_bits(result.key)
                record.update(bits=int(result.key.size), offset=len(data), fingerprint=_fingerprint(packed))
                data += packed
            records.append(record)
        _write(Path(directory) / f"{side}.key", bytes(data), secret=True)
        _write(Path(directory) / f"{side}.json", json.dumps(records, indent=1).encode())


def _report_blocks(args, blocks, pulses, asymptotic, plob):
    for block in blocks:
        _print_block(block, pulses, asymptotic, plob)
    _write_keys(args.output, blocks)
    kept = sum(block.keys_equal for block in blocks)
    logger.info("%d of %d blocks gave a key; keys and figures in %s/", kept, len(blocks), args.output)
    if any(not block.alice.aborted and not block.keys_equal for block in blocks):
        raise CLIError("Alice and Bob hold different keys: this is a bug, please report it")


def run_demo(args):
    if args.boards != "none":
        return _run_board_demo(args)
    from .sim.link import pulses_for, run_link
    bench = _bench(args, args.distance, _eavesdropper(args))
    settings = _settings(args)
    seed = _simulation_seed(args)
    pulses = pulses_for(bench, args.block_bits)
    asymptotic, plob = _reference_rates(bench)
    logger.info("%s km of fibre at %s dB/km, %s; %d block(s) of %s pulses", args.distance, args.attenuation,
                "no eavesdropper" if args.eve == "none" else f"eavesdropper: {args.eve}", args.blocks,
                f"{pulses:,}")
    progress = _Progress(args.blocks, "running the link", "blocks")
    try:
        blocks = run_link(bench, settings, pulses=pulses, blocks=args.blocks, seed=seed, progress=progress)
    finally:
        progress.close()
    _report_blocks(args, blocks, pulses, asymptotic, plob)


def _run_board_demo(args):
    from dataclasses import replace
    from .sim.boardlink import LinkTiming, frames_for, run_board_link
    timing = LinkTiming()
    bench = replace(_bench(args, args.distance, _eavesdropper(args)), slot_rate_hz=1e9 / timing.slot_ns)
    settings = _settings(args)
    seed = _simulation_seed(args)
    frames = frames_for(bench, args.block_bits, timing)
    pulses = frames << timing.frame_bits
    asymptotic, plob = _reference_rates(bench)
    logger.info("%s km of fibre, %s boards (%s); %d block(s) of %d frames of %d slots", args.distance,
                args.boards, "the gateware under Verilator" if args.boards == "rtl" else "the gateware's models",
                args.blocks, frames, 1 << timing.frame_bits)
    progress = _Progress(args.blocks * frames, "sifting", "frames")
    try:
        blocks = run_board_link(bench, settings, frames=frames, blocks=args.blocks, seed=seed,
                                rtl=args.boards == "rtl", timing=timing, progress=progress)
    except ValueError as error:
        raise CLIError(str(error)) from None
    finally:
        progress.close()
    _report_blocks(args, blocks, pulses, asymptotic, plob)


# ---------------------------------------------------------------------------------------------- boards

def _board_name(text):
    from .boards.platforms import BOARDS
    if text not in BOARDS:
        raise argparse.ArgumentTypeError(f"unknown board {text!r}; boards: {', '.join(BOARDS)}")
    return text


def add_build_arguments(parser):
    parser.add_argument("--board", metavar="NAME", type=_board_name, required=True,
                        help="icebreaker, ulx3s-85f or orangecrab-25f")
    parser.add_argument("--role", choices=("alice", "bob"), required=True, help="the node the board runs")
    parser.add_argument("-o", "--output", metavar="DIR", default=None,
                        help="folder for the bitstream and the build files (default: build/BOARD-ROLE)")


def run_build(args):
    from .boards.build import build
    from .boards.platforms import board as lookup_board
    from .boards.top import BoardTop
    from .wire import Role
    board = lookup_board(args.board)
    output = Path(args.output or f"build/{args.board}-{args.role}")
    try:
        top = BoardTop(board, Role[args.role.upper()])
    except ValueError as error:
        raise CLIError(str(error)) from None
    logger.info("building %s for the %s (%s, %.0f MHz): synthesis, place and route take minutes", args.role,
                board.name, board.device, top.config.clock_hz / 1e6)
    report = build(board, top, build_dir=output / "files", name=f"qkdlink-{args.role}")
    suffix = ".bin" if board.platform.family == "iCE40" else ".bit"
    bitstream = output / f"qkdlink-{args.role}{suffix}"
    _write(bitstream, report.bitstream)
    print(f"{board.name} {args.role}: {bitstream}")
    for kind, (used, available) in sorted(report.utilization.items()):
        if used:
            print(f"  {kind:<16}{used:>8,} of {available:>8,} ({100 * used / available:.0f} %)")
    for clock, (achieved, constraint) in report.fmax.items():
        print(f"  clock {clock}: {achieved:.1f} MHz (target {constraint:.1f} MHz)")
    from .boards.build import TimingError
    try:
        report.check_timing()
    except TimingError as error:
        raise CLIError(f"{error}; the bitstream may not work (kept in {bitstream})") from None


def add_flash_arguments(parser):
    parser.add_argument("--board", metavar="NAME", type=_board_name, required=True,
                        help="icebreaker, ulx3s-85f or orangecrab-25f")
    parser.add_argument("bitstream", metavar="BITSTREAM", help="the file `qkd build` wrote")
    parser.add_argument("-n", "--dry-run", action="store_true", help="print the command, run nothing")


def run_flash(args):
    from .boards.flash import FlashError, flash
    try:
        command = flash(args.board, args.bitstream, dry_run=args.dry_run)
    except FlashError as error:
        raise CLIError(str(error)) from None
    print(" ".join(map(str, command)) if args.dry_run else f"{args.board}: flashed {args.bitstream}")


def add_info_arguments(parser):
    parser.add_argument("url", metavar="URL",
                        help="the board's serial port (/dev/ttyUSB1), or socket://HOST:PORT for a simulated one")
    parser.add_argument("--timeout", metavar="SECONDS", type=float, default=1.0,
                        help="time to wait for each reply (default: %(default)s s)")


def run_info(args):
    from .host.board import Board, BoardError, LinkError
    try:
        with Board.open(args.url, timeout=args.timeout) as board:
            values = board.read_all()
            print(f"{args.url}: {board.role.name.lower()} on {board.board}, protocol "
                  f"{values['version'] >> 8}.{values['version'] & 0xff}, {values['clock_hz'] / 1e6:g} MHz, "
                  f"{board.phases} bins a cycle, frames of 2^{board.frame_bits} slots")
            for title, writable in (("configuration", True), ("counters and constants", False)):
                print(f"{title}:")
                for register in board.registers:
                    if register.writable == writable:
                        print(f"  {register.name:<20}{values[register.name]:>12,}  {register.doc}")
            print("streams:")
            for stream in board.streams.values():
                print(f"  {stream.name:<20}{'out' if stream.out else 'in':>4} {board.depth(stream.name):>8,} bytes"
                      f"  {stream.doc}")
    except (LinkError, BoardError, OSError) as error:
        raise CLIError(f"{args.url}: {error}") from None


def add_simulate_arguments(parser):
    parser.add_argument("--port", metavar="PORT", type=int, default=7000,
                        help="Alice's TCP port; Bob's is the next (default: %(default)s)")
    parser.add_argument("--model", action="store_true",
                        help="serve the gateware's Python models instead of the gateware under Verilator")
    parser.add_argument("-d", "--distance", metavar="KM", type=float, default=5.0,
                        help="fibre length (default: %(default)s km)")
    add_link_arguments(parser)


def run_simulate(args):
    from dataclasses import replace
    from .sim.boardlink import LinkTiming, simulated_link
    from .sim.serve import serve
    timing = LinkTiming()
    bench = replace(_bench(args, args.distance), slot_rate_hz=1e9 / timing.slot_ns)
    seed = _simulation_seed(args)
    if not args.model:
        logger.info("compiling the gateware with Verilator (cached after the first time)")
    link = simulated_link(bench, timing=timing, seed=seed, rtl=not args.model)
    try:
        with serve(lambda: link.endpoint("alice"), port=args.port) as alice, \
                serve(lambda: link.endpoint("bob"), port=args.port + 1) as bob:
            print(f"Alice: {alice.url}\nBob:   {bob.url}\n(Ctrl-C to stop)", flush=True)
            while True:
                time.sleep(3600)
    except OSError as error:
        raise CLIError(f"cannot serve on ports {args.port} and {args.port + 1}: {error.strerror}") from None
    finally:
        link.close()


# ---------------------------------------------------------------------------------------------- qkd sweep

def add_sweep_arguments(parser):
    parser.add_argument("--distances", metavar="KM", type=float, nargs=3, default=(0.0, 150.0, 10.0),
                        help="first, last and step of the fibre lengths (default: %(default)s)")
    parser.add_argument("-n", "--block-bits", metavar="BITS", type=_positive, default=10**6,
                        help="sifted key bits per simulated block, about (default: %(default)s)")
    parser.add_argument("-o", "--output", metavar="PREFIX", default="build/sweep",
                        help="write PREFIX.md (table) and PREFIX.png (plot) (default: %(default)s)")
    add_link_arguments(parser)


def run_sweep(args):
    import math
    from .host.finite_key import expected_counts, secret_length, binary_entropy
    from .sim.link import pulses_for, run_link
    from .sim.optics import transmittance

    first, last, step = args.distances
    if step <= 0 or last < first or first < 0:
        raise CLIError(f"--distances wants FIRST <= LAST and STEP > 0, not {first:g} {last:g} {step:g}")
    distances = [first + index * step for index in range(int((last - first) / step + 1e-9) + 1)]
    settings = _settings(args)
    seed = _simulation_seed(args)
    rows = []
    progress = _Progress(len(distances), "sweeping", "distances")
    try:
        for index, distance in enumerate(distances):
            bench = _bench(args, distance)
            pulses = pulses_for(bench, args.block_bits)
            [block] = run_link(bench, settings, pulses=pulses, seed=[seed, index])
            simulated = block.alice.figures["secret_bits"] / pulses if block.keys_equal else 0.0
            # The same block size in the channel model, without statistical fluctuations.
            eta = transmittance(bench.fibre) * bench.receiver.efficiency
            counts = expected_counts(pulses, settings.decoy, transmittance=eta,
                                     dark_count=2 * bench.receiver.dark_count,
                                     misalignment=bench.receiver.misalignment, p_z=bench.source.p_z,
                                     afterpulse=bench.receiver.afterpulse)
            qber = sum(counts.m_x) / max(sum(counts.n_x), 1e-300)
            leak = math.ceil(1.16 * sum(counts.n_z) * binary_entropy(min(qber, 0.5)))
            expected = secret_length(counts, settings.decoy, leak_ec=leak, eps_sec=settings.eps_sec,
                                     eps_cor=settings.eps_cor).length / pulses
            asymptotic, plob = _reference_rates(bench)
            reason = block.alice.abort_reason or block.bob.abort_reason or ""
            rows.append((distance, pulses, simulated, expected, asymptotic, plob, reason))
            progress(index + 1)
    finally:
        progress.close()

    lines = ["| distance (km) | pulses | simulated rate | model rate (f = 1.16) | asymptotic decoy rate | "
             "PLOB bound | note |", "|---:|---:|---:|---:|---:|---:|---|"]
    for distance, pulses, simulated, expected, asymptotic, plob, reason in rows:
        lines.append(f"| {distance:g} | {pulses:.3g} | {simulated:.3e} | {expected:.3e} | {asymptotic:.3e} | "
                     f"{plob:.3e} | {reason[:60]} |")
    table = "\n".join(lines) + "\n"
    print(table, end="")
    _write(f"{args.output}.md", table.encode())
    _plot_sweep(f"{args.output}.png", rows, args)
    logger.info("wrote %s.md and %s.png", args.output, args.output)


def _plot_sweep(path, rows, args):
    import io
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    distance = [row[0] for row in rows]
    figure, axes = pyplot.subplots(figsize=(7, 4.5), dpi=120)
    axes.semilogy(distance, [row[5] for row in rows], "k--", label="PLOB bound (repeaterless)")
    axes.semilogy(distance, [row[4] or float("nan") for row in rows], "C0-", label="asymptotic decoy-state rate")
    axes.semilogy(distance, [row[3] or float("nan") for row in rows], "C1-",
                  label=f"finite-key bound, channel model, {args.block_bits:.0e}-bit blocks")
    axes.semilogy(distance, [row[2] or float("nan") for row in rows], "C3o",
                  label="simulated link (qkdlink)")
    axes.set_xlabel("fibre length (km)")
    axes.set_ylabel("secret key per pulse (bits)")
    axes.set_title(f"qkdlink: key rate against distance ({args.attenuation} dB/km, "
                   f"efficiency {args.efficiency})")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    pyplot.close(figure)
    _write(path, buffer.getvalue())


# ---------------------------------------------------------------------------------------------- main

OPERATIONS = {
    # name: (summary, add arguments, run)
    "random": ("write random bits from the operating system's entropy source",
               add_random_arguments, run_random),
    "pa":     ("privacy amplification: hash a key with a Toeplitz matrix",
               add_pa_arguments, run_pa),
    "demo":   ("run a simulated QKD link, photons to identical secret keys at Alice and Bob",
               add_demo_arguments, run_demo),
    "sweep":  ("key rate against distance: simulated link, finite-key model, asymptotic and PLOB bounds",
               add_sweep_arguments, run_sweep),
    "build":  ("build a board's bitstream and report its resources and clock",
               add_build_arguments, run_build),
    "flash":  ("write a bitstream to a board",
               add_flash_arguments, run_flash),
    "info":   ("show a board's identity, configuration and counters",
               add_info_arguments, run_info),
    "simulate": ("serve a simulated Alice board and Bob board on local TCP ports",
                 add_simulate_arguments, run_simulate),
}


def _operations():
    """Every command: this module's and the networked nodes' (node, link, keys, certs), which live in
    :mod:`qkdlink.nodecli` and use this module's helpers."""
    from . import nodecli
    return {**OPERATIONS, **nodecli.OPERATIONS}


def get_argparser():
    parser = argparse.ArgumentParser(
        prog="qkd", formatter_class=TextHelpFormatter, fromfile_prefix_chars="@",
        description=textwrap.dedent("""\
            qkdlink: an open, FPGA-offloaded quantum key distribution link stack.

            Arguments can be read from a file with @FILE, one per line.
        """))
    parser.add_argument("-V", "--version", action="version",
                        version=f"qkdlink {_version()} (Python {platform.python_version()})")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="say more; give twice for debug output")
    parser.add_argument("-q", "--quiet", action="count", default=0,
                        help="say less; give twice for errors only")
    parser.add_argument("-L", "--log-file", metavar="FILE",
                        help="also write the most detailed log to FILE")
    subparsers = parser.add_subparsers(dest="operation", metavar="OPERATION", required=True)
    for name, (summary, add_arguments, _) in _operations().items():
        subparser = subparsers.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".",
                                          formatter_class=TextHelpFormatter)
        add_arguments(subparser)
    return parser


_handlers = []


def _setup_logging(args):
    level = max(logging.DEBUG, min(logging.ERROR, logging.INFO + 10 * args.quiet - 10 * args.verbose))
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    for handler in _handlers:                   # main() may run more than once in a process (tests)
        root.removeHandler(handler)
        handler.close()
    _handlers.clear()
    console = logging.StreamHandler()
    console.setLevel(level)
    console.setFormatter(logging.Formatter("qkd: %(levelname)s: %(message)s" if level <= logging.DEBUG
                                           else "%(message)s"))
    _handlers.append(console)
    if args.log_file:
        handler = logging.FileHandler(args.log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        _handlers.append(handler)
    for handler in _handlers:
        root.addHandler(handler)


def main(argv=None):
    args = get_argparser().parse_args(argv)
    _setup_logging(args)
    try:
        _operations()[args.operation][2](args)
    except CLIError as error:
        logger.error("qkd %s: %s", args.operation, error)
        return 1
    except KeyboardInterrupt:
        logger.error("qkd %s: interrupted", args.operation)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
