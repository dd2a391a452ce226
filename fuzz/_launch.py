"""Shared atheris launcher: ``python fuzz_X.py [libFuzzer options] [corpus dirs]``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(target_name: str) -> None:
    try:
        import atheris
    except ImportError:
        sys.exit("atheris is not installed: pip install atheris (see fuzz/README.md)")
    sys.path.insert(0, str(HERE))
    # Instrument the library (branch coverage feeds the fuzzer); the harness itself is not.
    with atheris.instrument_imports(include=["continuations"]):
        import continuations.protocol  # noqa: F401
    import targets

    target: Callable[[bytes], None] = targets.TARGETS[target_name]
    targets.fixture()  # built once, before fuzzing starts
    args = list(sys.argv)
    dirs = [a for a in args[1:] if not a.startswith("-")]
    if not dirs:
        dirs = [str(HERE / "corpus" / target_name)]
        args.append(dirs[0])
    corpus = Path(dirs[0])
    corpus.mkdir(parents=True, exist_ok=True)
    for name, data in targets.seeds(target_name).items():  # start from valid inputs
        path = corpus / f"seed-{name}"
        if not path.exists():
            path.write_bytes(data)
    atheris.Setup(args, target)
    atheris.Fuzz()
