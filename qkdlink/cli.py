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


def _write(path, data):
    """Write ``data`` to ``path`` whole or not at all: a temporary file beside it, then a rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
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
    _write(args.output, bytes(data))
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
    _write(args.output, output)
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


# ---------------------------------------------------------------------------------------------- main

OPERATIONS = {
    # name: (summary, add arguments, run)
    "random": ("write random bits from the operating system's entropy source",
               add_random_arguments, run_random),
    "pa":     ("privacy amplification: hash a key with a Toeplitz matrix",
               add_pa_arguments, run_pa),
}


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
    for name, (summary, add_arguments, _) in OPERATIONS.items():
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
        OPERATIONS[args.operation][2](args)
    except CLIError as error:
        logger.error("qkd %s: %s", args.operation, error)
        return 1
    except KeyboardInterrupt:
        logger.error("qkd %s: interrupted", args.operation)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
