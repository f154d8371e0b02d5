"""The capture path's timestamp resolution and event rates, next to what the host could do in software.

    python -m bench.capture [--slots N]

1. **Timestamps.** Detector pulses of the optical bench (``sim.optics.slot_events``, with the receiver's jitter)
   are sampled as each board's front-end samples them (iCE40: DDR at 48 MHz, 2 samples a cycle; ECP5: IDDRX2F at
   100 MHz, 4 a cycle) and tagged by the time-tagger's bit-exact model; each tag's time estimate is compared with
   the pulse's true start. The baseline is a single-rate sampler (1 sample a cycle) at the same clock. The first
   few thousand cycles also go through the RTL in the Amaranth simulator, which must give the same tags.
2. **Rates.** Each core of the sifting path runs in the Amaranth simulator at full load with no back-pressure
   (the tagger with an edge on all five inputs every cycle; the slot assigner with a one-cycle slot period and a
   click in every slot; the squasher, the sifter and the key memory with a beat offered every cycle), and the
   beats out per cycle times the board's clock give its sustained rate. The baseline is the host doing the same
   work in numpy (tagging sample words, squashing and sifting detections) on this machine.
"""

import argparse
import math
import time

import numpy as np
from amaranth.sim import Simulator

from bench.machine import describe
from qkdlink.gateware.choices import ChoiceMemory
from qkdlink.gateware.keymemory import KeyMemory
from qkdlink.gateware.sifter import Sifter
from qkdlink.gateware.slots import SlotAssigner, Squasher
from qkdlink.gateware.timetagger import TimeTagger
from qkdlink.host.sifting import sift, squash
from qkdlink.sim import optics, slots, timetagger


# (name, clock period in ns, samples per cycle) of each board's front-end.
FRONT_ENDS = (("iCEBreaker (UP5K)", 1000 / 48, 2), ("ULX3S (ECP5-85F)", 10.0, 4))
# Detector output pulse width: SPAD modules give TTL pulses of about 10 to 35 ns. A pulse shorter than a sample
# interval can fall between two samples and be missed; the table counts the pulses tagged.
PULSE_NS = 10.0
SIM_CYCLES = 5000


def bench_events(slots_count, seed):
    bench = optics.OpticalBench(
        source=optics.Source(intensities=(0.6, 0.2, 2e-4), probabilities=(0.5, 0.3, 0.2), p_z=0.8),
        fibre=optics.Fibre(length_km=0),
        receiver=optics.Receiver(dead_time=2, afterpulse=0.0, jitter_ns=0.1),
        # Alice's slot clock is not Bob's: 520 ppm apart here, so that the pulses fall at every phase of Bob's
        # clock cycle within the run (two crystals differ by tens of ppm; the run is short).
        slot_rate_hz=25e6 * (1 + 520e-6), frame_slots=1 << 12)
    return optics.slot_events(bench, 0, slots_count, rng=np.random.default_rng(seed))


def timestamp_figures(events, clock_ns, phases):
    samples = timetagger.bench_samples(events, phases=phases, clock_ns=clock_ns, pulse_ns=PULSE_NS)
    started = time.perf_counter()
    tags = timetagger.tag(samples.samples, channels=5, phases=phases, dead_cycles=0)
    host_seconds = time.perf_counter() - started
    errors = np.concatenate([
        timetagger.timestamp_errors(samples.times_ns[channel], tags.timestamps(channel), clock_ns=clock_ns,
                                    phases=phases)
        for channel in range(4)])
    return samples, tags, errors, samples.samples.size / host_seconds


def rtl_agrees(samples, phases):
    words = samples.samples[:SIM_CYCLES]
    model = timetagger.tag(words, channels=5, phases=phases, dead_cycles=0)
    rtl, _, _ = timetagger.run_gateware(words, channels=5, phases=phases, dead_cycles=0)
    return (np.array_equal(model.cycle, rtl.cycle) and np.array_equal(model.hits, rtl.hits) and
            np.array_equal(model.fine, rtl.fine)), len(model)


def beats_per_cycle(dut, feeds, output, *, drained=(), cycles=400, settings=()):
    """Offer a beat on every input in ``feeds`` (name -> function of the beat index giving a payload) every cycle,
    take every beat of ``output`` (and of the other outputs in ``drained``), and count the beats out of ``output``
    per cycle once the pipeline has filled."""
    counts = []

    async def bench(ctx):
        for signal, value in settings:
            ctx.set(signal, value)
        stream_out = getattr(dut, output)
        for name in (output, *drained):
            ctx.set(getattr(dut, name).ready, 1)
        issued = {name: 0 for name in feeds}
        for _ in range(cycles):
            for name, payload in feeds.items():
                port = getattr(dut, name)
                ctx.set(port.valid, 1)
                ctx.set(port.payload, payload(issued[name]))
            _, _, *handshakes = await ctx.tick().sample(
                stream_out.valid, *[getattr(dut, name).ready for name in feeds])
            counts.append(handshakes[0])
            for name, ready in zip(feeds, handshakes[1:]):
                issued[name] += bool(ready)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    steady = counts[cycles // 4:]
    return sum(steady) / len(steady)


def tagger_rate(phases):
    """Edges per cycle with every input toggling every cycle (a pulse in the first half of each cycle)."""
    half = (1 << (phases // 2 or 1)) - 1 if phases > 1 else 1
    word = 0
    for channel in range(5):
        word |= half << (channel * phases)
    cycles = 600 if phases > 1 else 1200
    words = np.full(cycles, word, dtype=np.uint64)
    if phases == 1:
        words[1::2] = 0              # one sample a cycle: an edge needs a low cycle before it
    tags, _, _ = timetagger.run_gateware(words, channels=5, phases=phases, dead_cycles=0)
    expected = timetagger.tag(words, channels=5, phases=phases, dead_cycles=0).edges
    assert tags.edges == expected, (tags.edges, expected)
    return tags.edges / cycles


def assigner_rate(phases):
    """Detections per cycle at a slot period of one cycle with a click in every slot."""
    frame_bits, cycles = 10, 600
    period = phases << 24
    events = [(0, 1 << 4, [0] * 5)] + [(n, 1 << (n % 4), [0] * 5) for n in range(1, cycles)]
    result = slots.run_gateware(events, phases=phases, frame_bits=frame_bits, period=period, delay=0,
                                gate_start=0, gate_width=phases)
    model = slots.assign(events, phases=phases, frame_bits=frame_bits, period=period, delay=0, gate_start=0,
                         gate_width=phases)
    assert list(result.detections) == list(model.detections)
    return len(result.detections) / (cycles - 1)


def squasher_rate():
    dut = Squasher(frame_width=32, frame_bits=16)
    return beats_per_cycle(dut, {"i_detections": lambda n: {"frame": 0, "slot": n & 0xffff,
                                                            "pattern": 1 + n % 15},
                                 "i_random": lambda n: n & 3}, "o_detections")


def sifter_rate():
    dut = Sifter()
    return beats_per_cycle(dut, {"i_detections": lambda n: {"basis": 0, "bit": n & 1, "alice_basis": 0,
                                                            "intensity": 0}}, "o_match",
                           drained=("o_key", "o_test"))


def lookup_rate():
    """Alice's side of sifting: lookups of Bob's announced slots in the choice memory (while no frame is written:
    at one slot a cycle, writes take one cycle in four and lookups keep the rest)."""
    dut = ChoiceMemory(frame_bits=10, frames=2)
    return beats_per_cycle(dut, {"i_lookup": lambda n: {"frame": 0, "slot": n & 1023, "basis": n & 1}},
                           "o_lookup")


def keymemory_rate():
    dut = KeyMemory(max_bits=1 << 14, width=4)
    counts = []

    async def bench(ctx):
        ctx.set(dut.i_bits.valid, 1)
        for n in range(400):
            ctx.set(dut.i_bits.payload, n & 1)
            _, _, ready = await ctx.tick().sample(dut.i_bits.ready)
            counts.append(ready)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return sum(counts[100:]) / len(counts[100:])


def host_sifting_rate(count=1 << 20, repeat=3):
    rng = np.random.default_rng(5)
    pattern = rng.integers(1, 16, count, dtype=np.uint8)
    random_bits = rng.integers(0, 2, (count, 2), dtype=np.uint8)
    alice = rng.integers(0, 2, count, dtype=np.uint8)
    intensity = rng.integers(0, 3, count, dtype=np.uint8)
    best = math.inf
    for _ in range(repeat):
        started = time.perf_counter()
        basis, bit = squash(pattern, random_bits)
        sift(basis, bit, alice, intensity)
        best = min(best, time.perf_counter() - started)
    return count / best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", metavar="N", type=int, default=200_000,
                        help="slots of the optical bench to tag (default: %(default)s)")
    args = parser.parse_args()
    print(f"Machine: {describe()}\n")

    events = bench_events(args.slots, seed=1)
    print(f"### Timestamps ({events.time_ns.size} detector pulses from {args.slots} slots at 25 MHz, receiver "
          f"jitter {0.1} ns rms, pulses {PULSE_NS} ns wide)\n")
    print("| Front-end | Clock | Samples a cycle | Bin | RMS error | Bin / sqrt(12) | Max abs error | "
          "Pulses tagged | RTL = model | Host tagging the samples (numpy model) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    pulses = events.time_ns.size
    for name, clock_ns, phases in FRONT_ENDS:
        for label, used_phases in ((name, phases), (f"baseline: single-rate, {name.split()[0]}", 1)):
            samples, tags, errors, host_rate = timestamp_figures(events, clock_ns, used_phases)
            bin_ns = clock_ns / used_phases
            agree, checked = rtl_agrees(samples, used_phases)
            print(f"| {label} | {1000 / clock_ns:.0f} MHz | {used_phases} | {bin_ns:.2f} ns | "
                  f"{np.sqrt(np.mean(errors ** 2)):.2f} ns | {bin_ns / math.sqrt(12):.2f} ns | "
                  f"{np.abs(errors).max():.2f} ns | {errors.size / pulses:.1%} | "
                  f"{'yes' if agree else 'NO'} ({checked} events) | "
                  f"{host_rate / 1e6:.1f} M cycles/s |")

    print("\n### Sustained rates at full load (Amaranth simulator, beats per cycle x clock)\n")
    print("| Core | Beats a cycle | iCEBreaker at 48 MHz | ULX3S at 100 MHz |")
    print("|---|---|---|---|")
    rows = [
        ("Time-tagger (edges, 5 inputs, 2 / 4 samples a cycle)", tagger_rate(2), tagger_rate(4)),
        ("Slot assigner (detections, slot = 1 cycle)", assigner_rate(2), assigner_rate(4)),
        ("Squasher (detections)", squasher_rate(), None),
        ("Choice memory (Alice's lookups of Bob's detections)", lookup_rate(), None),
        ("Sifter (detections)", sifter_rate(), None),
        ("Key memory (appended bits)", keymemory_rate(), None),
    ]
    for name, ice40, ecp5 in rows:
        ecp5 = ice40 if ecp5 is None else ecp5
        beats = f"{ice40:.2f}" if ice40 == ecp5 else f"{ice40:.2f} / {ecp5:.2f}"
        print(f"| {name} | {beats} | {ice40 * 48:.0f} M/s | {ecp5 * 100:.0f} M/s |")
    host = host_sifting_rate()
    print(f"| Baseline: host numpy squash + sift | | {host / 1e6:.1f} M/s on this machine | |")


if __name__ == "__main__":
    main()
