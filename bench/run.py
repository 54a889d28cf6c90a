"""`make bench` / `make bench-quick`: run the benchmark and write bench/results.json.

python -m bench.run --sizes 10000,100000,1000000          # the full scaling run
python -m bench.run --sizes 2000 --naive 100 --out bench/results-quick.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.benchmark import run
from medmeter.workspace import Workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="Comma-separated interaction counts.")
    parser.add_argument("--naive", type=int, default=300, help="Interactions for the naive baseline.")
    parser.add_argument("--out", type=Path, default=Path("bench/results.json"), help="Where to write the results.")
    parser.add_argument(
        "--mining",
        choices=("explicit", "auto"),
        default="auto",
        help="explicit: anvil --no-mining, sealed by the benchmark; auto: one block per transaction.",
    )
    parser.add_argument(
        "--state",
        choices=("full", "archive"),
        default="full",
        help="full: anvil keeps the last 128 blocks' state, as a geth full node; archive: every block's (the devnet).",
    )
    args = parser.parse_args()
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    run(Workspace.locate(), sizes, args.out, print, naive_count=args.naive, mining=args.mining, state=args.state)


if __name__ == "__main__":
    main()
