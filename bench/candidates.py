"""How different a source's candidates are, before and after near-duplicates are replaced.

For each demo photograph (degraded x4 and seeded as `dspo demo` does) and generator, the candidates' pairwise
mean absolute RGB difference (0-255; worker.generators.distinct) with replacement off
(min_difference=0) and on (the default, MIN_DIFFERENCE): the smallest and largest pair, the pairs under
it, and which candidates were replaced (with the number of the proposal kept). Prints a markdown
table (docs/regions.md, "Candidates").

    python -m bench.candidates                      # classical and, if installed, realesrgan
    python -m bench.candidates --generators classical
"""

from __future__ import annotations

import argparse
import itertools
import time

from PIL import Image
from skimage import data as photographs

from dspo.images import degrade, encode_png, sha256_hex
from worker.generators import GeneratorUnavailable, get_generator
from worker.generators.distinct import MIN_DIFFERENCE, difference

PHOTOGRAPHS = ("astronaut", "chelsea", "coffee", "rocket")


def demo_seed(photo: Image.Image) -> int:
    """The seed `dspo demo` gives this photograph (worker.jobs: from the uploaded PNG's sha256)."""
    return int(sha256_hex(encode_png(photo))[:12], 16)


def pairwise(images: list[Image.Image]) -> dict[tuple[int, int], float]:
    return {
        (i, j): difference(images[i], images[j]) for i, j in itertools.combinations(range(len(images)), 2)
    }


def describe(pairs: dict[tuple[int, int], float]) -> str:
    low = min(pairs, key=pairs.get)
    high = max(pairs, key=pairs.get)
    near = sum(value < MIN_DIFFERENCE for value in pairs.values())
    return f"{pairs[low]:.1f} ({low[0] + 1}-{low[1] + 1}) | {pairs[high]:.1f} | {near} of {len(pairs)}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--generators", default="classical,realesrgan")
    parser.add_argument("-n", type=int, default=4, help="candidates per source")
    args = parser.parse_args()

    under = f"pairs < {MIN_DIFFERENCE}"
    print(
        f"| generator | photograph | off: smallest pair | off: largest | off: {under} "
        f"| on: smallest pair | on: largest | on: {under} | replaced (proposal used) | seconds on |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.generators.split(","):
        try:
            plain, distinct = get_generator(name, min_difference=0), get_generator(name)
        except GeneratorUnavailable as exc:
            print(f"| {name} | not installed here: {exc} |")
            continue
        for photo in PHOTOGRAPHS:
            hq = Image.fromarray(getattr(photographs, photo)()).convert("RGB")
            seed = demo_seed(hq)
            lq, _ = degrade(hq, scale=4, seed=seed)
            before = plain.generate(lq, scale=4, n=args.n, seed=seed)
            started = time.perf_counter()
            after = distinct.generate(lq, scale=4, n=args.n, seed=seed)
            seconds = time.perf_counter() - started
            replaced = [
                f"{i + 1} ({c.settings['distinct']['attempt']})"
                for i, c in enumerate(after)
                if c.settings["distinct"]["attempt"] > 0
            ]
            off, on = (
                describe(pairwise([c.image for c in before])),
                describe(pairwise([c.image for c in after])),
            )
            print(f"| {name} | {photo} | {off} | {on} | {', '.join(replaced) or '-'} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
