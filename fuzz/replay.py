"""Run fuzz inputs through the targets with plain Python (no atheris needed).

    python fuzz/replay.py TARGET FILE_OR_DIR...        # reproduce: raises on a failing input
    python fuzz/replay.py --coverage TARGET DIR...     # also report line coverage

Line coverage is measured with ``sys.settrace`` over the protocol modules, so it needs
nothing beyond the standard library.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import types
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import targets  # noqa: E402

MODULES = ("wire", "endpoint", "session", "handshake", "keys", "streams", "link", "states")


def inputs(paths: list[str]) -> Iterator[tuple[Path, bytes]]:
    for name in paths:
        path = Path(name)
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        for f in files:
            yield f, f.read_bytes()


def executable_lines(module: types.ModuleType) -> set[int]:
    """Lines of function bodies: what runs at import (module and class bodies) is left
    out, since the replay traces calls only."""
    lines: set[int] = set()
    source = Path(module.__file__ or "").read_text()
    code = compile(source, module.__file__ or "", "exec")
    stack = [code]
    while stack:
        co = stack.pop()
        if co.co_flags & inspect.CO_NEWLOCALS:
            lines.update(line for _, _, line in co.co_lines() if line is not None)
        stack.extend(c for c in co.co_consts if isinstance(c, types.CodeType))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--coverage", action="store_true")
    parser.add_argument("target", choices=sorted(targets.TARGETS))
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args()
    target = targets.TARGETS[args.target]
    targets.fixture()
    import continuations.protocol as proto

    mods = {name: sys.modules[f"{proto.__name__}.{name}"] for name in MODULES}
    files = {m.__file__: name for name, m in mods.items()}
    hit: dict[str, set[int]] = {name: set() for name in MODULES}

    def tracer(frame: types.FrameType, event: str, arg: object) -> object:
        name = files.get(frame.f_code.co_filename)
        if name is None:
            return None
        if event in ("call", "line"):
            hit[name].add(frame.f_lineno)
        return tracer

    count = 0
    if args.coverage:
        sys.settrace(tracer)
    try:
        for path, data in inputs(args.paths):
            try:
                target(data)
            except BaseException:
                sys.settrace(None)
                print(f"FAILED on {path}", file=sys.stderr)
                raise
            count += 1
    finally:
        sys.settrace(None)
    print(f"{count} inputs ran without breaking an invariant")
    if args.coverage:
        for name, mod in mods.items():
            lines = executable_lines(mod)
            covered = len(hit[name] & lines)
            print(f"  protocol/{name}.py: {covered}/{len(lines)} lines "
                  f"({100 * covered / max(1, len(lines)):.0f}%)")


if __name__ == "__main__":
    main()
