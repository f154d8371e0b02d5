"""End-to-end: the simulated link's secret key rate against the asymptotic decoy-state rate, and time per block.

    python -m bench.link [--sizes 1e6 1e7] [--distances 10 25 50 100]

One block per distance and block size (sifted Z-basis bits, about), with the demo's link settings. The baseline is
the asymptotic decoy-state rate of the same channel (infinitely many decoys and infinitely long keys), computed in
the same run; the wall time covers the optical bench and both sides' post-processing.
"""

import argparse
import time

from bench.machine import describe
from qkdlink.cli import DEMO_INTENSITIES, DEMO_P_Z, DEMO_PROBABILITIES
from qkdlink.host.finite_key import DecoySettings, asymptotic_rate, binary_entropy, plob_bound
from qkdlink.host.protocol import ProtocolSettings
from qkdlink.sim import optics
from qkdlink.sim.link import pulses_for, run_link


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7])
    parser.add_argument("--distances", type=float, nargs="+", default=[10, 25, 50, 100])
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()

    source = optics.Source(intensities=DEMO_INTENSITIES, probabilities=DEMO_PROBABILITIES, p_z=DEMO_P_Z)
    receiver = optics.Receiver(p_z=DEMO_P_Z, dead_time=0, afterpulse=0)
    settings = ProtocolSettings(DecoySettings(DEMO_INTENSITIES, DEMO_PROBABILITIES))
    print(f"machine: {describe()}")
    print()
    print("| sifted bits | distance (km) | pulses | secret bits | rate per pulse | asymptotic rate | fraction | "
          "PLOB bound | QBER Z | f | round trips | wall time (s) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        for distance in args.distances:
            bench = optics.OpticalBench(source=source, fibre=optics.Fibre(length_km=distance), receiver=receiver)
            pulses = pulses_for(bench, int(size))
            started = time.perf_counter()
            [block] = run_link(bench, settings, pulses=pulses, seed=[args.seed, int(size), int(distance)])
            elapsed = time.perf_counter() - started
            channel = optics.transmittance(bench.fibre)
            asymptotic = asymptotic_rate(channel * receiver.efficiency, dark_count=2 * receiver.dark_count,
                                         misalignment=receiver.misalignment, intensity=source.intensities[0],
                                         p_z=source.p_z)
            figures = block.bob.figures
            secret = block.alice.figures.get("secret_bits", 0) if block.keys_equal else 0
            n = sum(figures["counts"].n_z) if "counts" in figures else 0
            leak = figures.get("leaked_bits")
            qber = figures.get("qber_z")
            f = leak / (n * binary_entropy(qber)) if leak and qber and 0 < qber < 0.5 else float("nan")
            print(f"| {size:.0e} | {distance:g} | {pulses:.3g} | {secret:,} | {secret / pulses:.3e} | "
                  f"{asymptotic:.3e} | {secret / pulses / asymptotic:.2f} | {plob_bound(channel):.3e} | "
                  f"{100 * (qber or 0):.2f} % | {f:.3f} | {figures.get('round_trips', '-')} | {elapsed:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
