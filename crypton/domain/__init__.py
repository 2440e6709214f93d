"""The exchange core: pure, typed and deterministic. No I/O, no clock, no randomness.

``make mypyc`` compiles its hot modules in place; an extension module is imported
before the ``.py`` beside it, so a build older than its source would run old code in
its place: importing the package refuses that, with what to run.
"""

from pathlib import Path as _Path


def _refuse_a_stale_build() -> None:
    here = _Path(__file__).parent
    for compiled in here.glob("*.cpython-*.so"):
        source = here / (compiled.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > compiled.stat().st_mtime:
            raise ImportError(
                f"the compiled {compiled.name} is older than {source.name}: run `make mypyc`"
                " to compile the core again, or `make unmypyc` to run it as plain Python"
            )


_refuse_a_stale_build()
