"""A small network of leaky integrate-and-fire neurons, in plain Python (no dependency).

80% excitatory and 20% inhibitory neurons, each connected to a random 10% of the others with a
fixed seed, driven by independent random (Poisson) input, with delta synapses and one synaptic
delay: a sparse balanced network in the spirit of Brunel (2000). Writes, into ``--out``:

- ``spikes.csv``: one line per spike, ``neuron,time_ms``, in time order;
- ``summary.json``: neurons, spikes, mean firing rate (Hz), simulated duration (ms), and the
  parameters and seed that make the run repeatable.

Same arguments, same spikes: every random draw comes from one seeded generator.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

# Membrane (mV, ms)
V_REST = -65.0
V_RESET = -65.0
V_THRESHOLD = -50.0
TAU_M = 20.0
REFRACTORY = 2.0
# Synapses: a spike moves the target's potential by J (mV), after DELAY (ms)
J_EXCITATORY = 0.5
G_INHIBITION = 5.0  # an inhibitory spike weighs G times an excitatory one, with opposite sign
DELAY = 1.5
CONNECTION_PROBABILITY = 0.1
# Outside drive: independent Poisson spikes of weight J_EXTERNAL into every neuron
J_EXTERNAL = 0.5
EXTERNAL_RATE_HZ = 1400.0


def connect(neurons: int, excitatory: int, rng: random.Random) -> list[list[tuple[int, float]]]:
    """For each neuron, the (target, weight) of its outgoing synapses (no self-connection)."""
    out: list[list[tuple[int, float]]] = []
    for source in range(neurons):
        weight = J_EXCITATORY if source < excitatory else -G_INHIBITION * J_EXCITATORY
        targets = [
            t for t in range(neurons) if t != source and rng.random() < CONNECTION_PROBABILITY
        ]
        out.append([(t, weight) for t in targets])
    return out


def simulate(
    neurons: int, duration_ms: float, dt: float, seed: int
) -> tuple[list[tuple[int, float]], int]:
    """The spikes ``(neuron, time_ms)`` of one run, and its number of synapses."""
    rng = random.Random(seed)  # noqa: S311  (a model's randomness, repeatable by its seed)
    excitatory = int(neurons * 0.8)
    synapses = connect(neurons, excitatory, rng)
    steps = round(duration_ms / dt)
    delay_steps = max(1, round(DELAY / dt))
    decay = dt / TAU_M
    p_external = EXTERNAL_RATE_HZ * dt / 1000.0
    refractory_steps = round(REFRACTORY / dt)

    v = [V_REST + (V_THRESHOLD - V_REST) * rng.random() for _ in range(neurons)]
    refractory_until = [0] * neurons
    # A ring of future inputs: slot k holds what arrives k steps from now.
    ring = [[0.0] * neurons for _ in range(delay_steps + 1)]
    spikes: list[tuple[int, float]] = []
    draw = rng.random
    for step in range(steps):
        slot = ring[step % len(ring)]
        fired = []
        for i in range(neurons):
            arriving = slot[i]
            slot[i] = 0.0
            if step < refractory_until[i]:
                continue
            vi = v[i]
            vi += (V_REST - vi) * decay + arriving
            if draw() < p_external:
                vi += J_EXTERNAL
            if vi >= V_THRESHOLD:
                fired.append(i)
                vi = V_RESET
                refractory_until[i] = step + refractory_steps
            v[i] = vi
        if fired:
            later = ring[(step + delay_steps) % len(ring)]
            t = round(step * dt, 3)
            for i in fired:
                spikes.append((i, t))
                for target, weight in synapses[i]:
                    later[target] += weight
    return spikes, sum(len(s) for s in synapses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--neurons", type=int, default=200)
    parser.add_argument("--duration-ms", type=float, default=10000.0)
    parser.add_argument("--dt-ms", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=20260301)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    if args.neurons < 2 or args.duration_ms <= 0 or args.dt_ms <= 0:
        parser.error("needs at least 2 neurons and a positive duration and time step")

    began = time.process_time()
    spikes, synapses = simulate(args.neurons, args.duration_ms, args.dt_ms, args.seed)
    cpu = time.process_time() - began

    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "spikes.csv").open("w", encoding="ascii") as out:
        out.write("neuron,time_ms\n")
        out.writelines(f"{neuron},{t:.1f}\n" for neuron, t in spikes)
    rate = len(spikes) / args.neurons / (args.duration_ms / 1000.0)
    summary = {
        "model": "leaky integrate-and-fire, delta synapses, sparse random connectivity",
        "neurons": args.neurons,
        "excitatory": int(args.neurons * 0.8),
        "synapses": synapses,
        "spikes": len(spikes),
        "mean_rate_hz": round(rate, 3),
        "duration_ms": args.duration_ms,
        "dt_ms": args.dt_ms,
        "seed": args.seed,
        "cpu_seconds": round(cpu, 3),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"{args.neurons} neurons, {len(spikes)} spikes in {args.duration_ms:g} ms "
        f"({rate:.1f} Hz per neuron), {cpu:.2f} s of CPU"
    )


if __name__ == "__main__":
    main()
