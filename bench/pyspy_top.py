"""
Summarise a py-spy profile in collapsed-stack form (C{--format raw}, as
C{python -m bench --profile DIR} writes): the functions with the most
samples on top of the stack (self) and anywhere on it (total).

Usage: C{python -m bench.pyspy_top FILE [N]}
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Tuple


def summarise(path: str) -> Tuple[int, Counter, Counter]:
    """
    Total samples, and samples per function as leaf and anywhere.
    """
    own: Counter = Counter()
    total: Counter = Counter()
    samples = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            samples += n
            frames = [
                frame.split(" (")[0] + " " + frame.rsplit("/", 1)[-1].split(":")[0].rstrip(")")
                for frame in stack.split(";")
            ]
            own[frames[-1]] += n
            for frame in set(frames):
                total[frame] += n
    return samples, own, total


def main() -> None:
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    samples, own, total = summarise(path)
    print(f"{samples} samples")
    for title, counter in (("self", own), ("total", total)):
        print(f"-- {title}")
        for name, n in counter.most_common(top):
            print(f"{100 * n / max(samples, 1):5.1f}%  {name}")


if __name__ == "__main__":
    main()
