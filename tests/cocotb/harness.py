"""What the Verilator benches of this folder share: the Verilog conversion, the build and run, and bounded transfers.

A bench module holds ``@cocotb.test()`` coroutines, which run in the simulator process, and a pytest entry point,
which calls :func:`run`. The simulator imports the bench by its file name from this folder (its working directory)
and the bench imports this module as ``tests.cocotb.harness``: pytest puts the repository root on ``sys.path`` and
cocotb's runner hands ``sys.path`` on as ``PYTHONPATH``. By hand, run a bench from the repository root as
``python -m tests.cocotb.test_toeplitz`` (see :func:`main`).

Every wait here is bounded by an explicit ``timeout`` in cycles, so a lost beat fails the test instead of hanging it.
"""

import os
import tempfile
from pathlib import Path

from amaranth.lib import data
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from qkdlink.sim.verilator import VERILATOR_PCH_FLAGS, convert


def run(tmp_path, component, *, toplevel, test_module, env=None):
    """Write ``component`` to ``tmp_path/<toplevel>.v``, build it with Verilator (``$SIM`` to override, ``WAVES=1``
    for traces) in ``tmp_path/sim_build`` and run the cocotb tests of ``test_module`` (a module of this folder, by
    name) against it, with ``env`` added to the simulator's environment. Under pytest a failed cocotb test raises."""
    from cocotb_tools.runner import get_runner

    source = tmp_path / f"{toplevel}.v"
    source.write_text(convert(component, toplevel))
    build_dir = tmp_path / "sim_build"
    runner = get_runner(os.getenv("SIM", "verilator"))
    # Amaranth's generated Verilog is not written to Verilator's lint rules (widths, incomplete cases).
    runner.build(sources=[source], hdl_toplevel=toplevel, build_dir=build_dir,
                 build_args=["-Wno-fatal", "-Wno-lint", "-Wno-style", *VERILATOR_PCH_FLAGS],
                 waves=bool(int(os.getenv("WAVES", "0"))))
    return runner.test(hdl_toplevel=toplevel, test_module=test_module, build_dir=build_dir,
                       test_dir=Path(__file__).parent, extra_env=env or {},
                       results_xml=str(tmp_path / "results.xml"))


def main(run_in):
    """A bench's ``__main__``: set the toolchain up as the test suite's conftest does and call ``run_in(directory)``
    with a temporary directory."""
    from qkdlink import toolchain

    toolchain.setup()
    with tempfile.TemporaryDirectory() as directory:
        run_in(Path(directory))


def pack(layout, value):
    """``value`` (a dict for a struct) as the bits of a ``layout`` payload, an int to drive a port with."""
    return int(data.Layout.cast(layout).const(value).as_value().value)


async def start(dut, *, zero=()):
    """Start a 10 ns clock on ``clk``, drive the ports named in ``zero`` (valids, readys, enables) to 0 and
    :func:`reset`."""
    Clock(dut.clk, 10, unit="ns").start()
    for name in zero:
        dut[name].value = 0
    await reset(dut)


async def reset(dut):
    """Hold ``rst`` for two cycles."""
    dut.rst.value = 1
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0


async def idle(dut, rng, stall):
    """Wait a random number of cycles, each with probability ``stall``: random gaps and back-pressure."""
    while rng.random() < stall:
        await RisingEdge(dut.clk)


async def put(dut, name, payload, *, timeout):
    """Offer one beat on the input stream ``name`` and wait for its transfer, as Amaranth's ``stream_put`` does;
    fail if none comes within ``timeout`` cycles."""
    dut[f"{name}__payload"].value = payload
    dut[f"{name}__valid"].value = 1
    for _ in range(timeout):
        await ReadOnly()                            # sample the settled cycle...
        accepted = bool(dut[f"{name}__ready"].value)
        await RisingEdge(dut.clk)                   # ...the transfer happens on this edge
        if accepted:
            dut[f"{name}__valid"].value = 0
            return
    raise AssertionError(f"{name} did not accept a beat within {timeout} cycles")


async def get(dut, name, *, timeout):
    """Take one beat from the output stream ``name`` and return its payload as an int, as Amaranth's ``stream_get``
    does; fail if none comes within ``timeout`` cycles."""
    dut[f"{name}__ready"].value = 1
    for _ in range(timeout):
        await ReadOnly()
        valid = bool(dut[f"{name}__valid"].value)
        payload = int(dut[f"{name}__payload"].value)
        await RisingEdge(dut.clk)
        if valid:
            dut[f"{name}__ready"].value = 0
            return payload
    raise AssertionError(f"no {name} beat within {timeout} cycles")


async def assert_no_beats(dut, names, *, cycles, message):
    """Fail if any output stream in ``names`` offers a beat in the next ``cycles`` cycles; ``message`` may name the
    stream as ``{name}``."""
    for _ in range(cycles):
        await ReadOnly()
        for name in names:
            assert not dut[f"{name}__valid"].value, message.format(name=name)
        await RisingEdge(dut.clk)
