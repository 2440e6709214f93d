"""Instructions the core spends per command, counted by valgrind: a figure no busy machine moves.

    python -m loadtest.core_instructions                 # 20,000 commands, seed 1
    make mypyc && python -m loadtest.core_instructions   # the compiled core (only it)

Timings on a shared machine wander by a factor of two from hour to hour (``bench_core``
ran the same code at 48,000 and 170,000 commands/s on one day), so a change of a few
percent cannot be seen in them. This counts instead: it builds ``bench_core``'s seeded
commands, then runs ``--commands`` of them in batches of 1,000 through
``Exchange.submit_batch`` under ``valgrind --tool=callgrind``, collecting only inside
the batch loop (``run_batch``), with ``PYTHONHASHSEED=0`` so that dict probes repeat.
The users' funding goes through the same loop and is counted too, the same in every
run. Needs valgrind (``apt-get install valgrind``); about a minute.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from crypton.domain import matching
from crypton.runtime import tune_gc
from loadtest import callgrind
from loadtest.bench_core import _funded, build_commands

_LOOP = "CPyPy_delivery___run_batch"
"""The compiled batch loop's entry, where counting starts and stops. Plain Python has no
such symbol: only the compiled core (``make mypyc``) is counted."""


def _child(path: str) -> None:
    """Under valgrind: fund, then run the commands in batches of 1,000, collecting
    garbage as the dataflow does (``crypton.runtime.tune_gc``)."""
    tune_gc()
    with open(path, "rb") as f:
        commands, credits = pickle.load(f)
    exchange = _funded(credits)
    for i in range(0, len(commands), 1000):
        exchange.submit_batch(commands[i : i + 1000])
    print("compiled" if matching.__file__.endswith(".so") else "plain", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--commands", type=int, default=20_000, help="default 20,000")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0
    if args.commands <= 0:
        parser.error("--commands must be positive")
    with tempfile.TemporaryDirectory() as tmp:
        commands = Path(tmp) / "commands.pkl"
        commands.write_bytes(pickle.dumps(build_commands(args.commands, args.seed)))
        try:
            counted = callgrind.count(
                f"{args.commands:,} commands",
                "loadtest.core_instructions",
                _LOOP,
                "--child",
                str(commands),
            )
        except callgrind.CountFailed as failed:
            print(f"error: {failed.line}", file=sys.stderr)
            return failed.code
    total = counted.instructions
    core = "compiled" if "compiled" in counted.stderr else "plain Python"
    if total == 0:
        print("error: nothing counted: the core is not compiled (make mypyc)", file=sys.stderr)
        return 1
    print(f"core               {core}")
    print(f"commands           {args.commands:,} (seed {args.seed}), and the funding")
    print(f"instructions       {total:,} in run_batch, {total / args.commands:,.0f} a command")
    return 0


if __name__ == "__main__":
    sys.exit(main())
