"""The docs state what the code does: the state table and the CLI."""

from __future__ import annotations

import re
from pathlib import Path

from continuations.cli import build_parser
from continuations.protocol.states import SESSION_TRANSITIONS

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_protocol_state_table_matches_code() -> None:
    text = (DOCS / "protocol.md").read_text().split("## States", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\w+) \| (\w+) \| (\w+) \|$", text, flags=re.M)
    documented = {(a, t, b) for a, t, b in rows if a != "from"}
    actual = {(a.value, t.value, b.value) for (a, t), b in SESSION_TRANSITIONS.items()}
    assert documented == actual


def test_every_cli_command_is_documented() -> None:
    usage = build_parser().format_help()
    commands = re.findall(r"^    ([a-z][\w-]*)\s{2,}\S", usage, flags=re.M)
    assert commands, usage
    text = (DOCS / "cli.md").read_text()
    for name in commands:
        assert f"continuations {name}" in text, f"docs/cli.md does not describe `{name}`"
