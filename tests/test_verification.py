"""The SPIN model of the session protocol (verification/) checks out, and can fail.

verification/check.sh runs every check once for the whole module (about a minute
on two cores); the tests then read its summary. Without spin the module is
skipped, except under CI, which installs spin and so must not skip silently.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VERIFY = ROOT / "verification"
CHECK = VERIFY / "check.sh"

pytestmark = pytest.mark.slow


def _require_tools() -> None:
    for tool, hint in (("spin", "apt-get install spin"), ("gcc", "apt-get install gcc")):
        if shutil.which(tool) is None:
            if os.environ.get("CI"):
                pytest.fail(f"{tool} is not on PATH, but CI must run the model checks ({hint})")
            pytest.skip(f"{tool} not installed ({hint})")


@dataclass
class Run:
    returncode: int
    output: str
    out: Path
    rows: dict[str, dict[str, str]]


def _check(tmp: Path, *, src: Path = VERIFY, only: str = "") -> Run:
    out = tmp / "out"
    env = dict(os.environ, VERIFY_SRC=str(src), VERIFY_OUT=str(out), VERIFY_ONLY=only)
    done = subprocess.run(
        ["bash", str(CHECK)], env=env, capture_output=True, text=True, timeout=900
    )
    rows: dict[str, dict[str, str]] = {}
    summary = out / "summary.tsv"
    if summary.exists():
        with summary.open(newline="") as fh:
            rows = {row["name"]: row for row in csv.DictReader(fh, delimiter="\t")}
    return Run(done.returncode, done.stdout + done.stderr, out, rows)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    _require_tools()
    return _check(tmp_path_factory.mktemp("verification"))


def _rows(run: Run, model: str, check: str, expect: str) -> list[dict[str, str]]:
    rows = [
        r for r in run.rows.values()
        if r["model"] == model and r["check"] == check and r["expect"] == expect
    ]
    assert rows, f"no {check} check of {model} ran:\n{run.output}"
    return rows


def test_check_script_passes(run: Run) -> None:
    assert run.returncode == 0, run.output
    assert "all checks as expected" in run.output
    assert all(r["verdict"] == "ok" for r in run.rows.values()), run.output


def test_model_has_no_assertion_violations_or_invalid_end_states(run: Run) -> None:
    for row in _rows(run, "session.pml", "safety", "pass"):
        assert row["errors"] == "0", row
        assert int(row["states"]) > 100_000, row  # a real search, not a stub


def test_model_has_no_non_progress_cycles(run: Run) -> None:
    for row in _rows(run, "session.pml", "np", "pass"):
        assert row["errors"] == "0", row
        assert int(row["states"]) > 100_000, row


def test_six_migrations_are_explored(run: Run) -> None:
    defines = {r["defines"] for r in _rows(run, "session.pml", "safety", "pass")}
    assert any("-DMAXV=6" in d for d in defines), defines


def test_sequence_semantics_variant_has_a_counterexample(run: Run) -> None:
    row = run.rows["broken-sequence"]
    assert row["model"] == "session_broken.pml"
    assert int(row["errors"]) >= 1, row


def test_counterexample_replays_to_the_violated_assertion(run: Run, tmp_path: Path) -> None:
    """spin's guided replay of the trail ends on the ends-agree assertion."""
    row = run.rows["broken-sequence"]
    for name in ("session.pml", "session_broken.pml"):
        shutil.copy(VERIFY / name, tmp_path / name)
    shutil.copy(run.out / "broken-sequence.trail", tmp_path / "session_broken.pml.trail")
    done = subprocess.run(
        ["spin", "-t", "-p", *row["defines"].split(), "session_broken.pml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    replay = done.stdout + done.stderr
    assert "assertion violated" in replay, replay[-3000:]
    assert "(scur==cv)" in replay, replay[-3000:]  # the quiescence agreement check


@pytest.mark.parametrize(
    ("name", "assertion"),
    [
        ("literal-resume", "o>=sacked"),  # resent bytes the sender had already freed
        ("late-confirm", "cst!=C_FAILED"),  # data into a session the client gave up
    ],
)
def test_design_flaw_variants_have_counterexamples(run: Run, name: str, assertion: str) -> None:
    row = run.rows[name]
    assert int(row["errors"]) >= 1, row
    replay = (run.out / f"{name}.replay.txt").read_text()
    assert "assertion violated" in replay and assertion in replay, replay[-3000:]


def test_check_fails_when_the_model_is_wrong(tmp_path: Path) -> None:
    """A model whose server uses sequence numbers must make check.sh fail."""
    _require_tools()
    src = tmp_path / "src"
    src.mkdir()
    text = (VERIFY / "session.pml").read_text()
    (src / "session.pml").write_text("#define SEQUENCE_SEMANTICS\n" + text)
    shutil.copy(VERIFY / "session_broken.pml", src / "session_broken.pml")
    result = _check(tmp_path, src=src, only="safety-v3f2")
    assert result.returncode == 1, result.output
    assert result.rows["safety-v3f2"]["verdict"].startswith("FAILED"), result.output


def test_check_fails_when_a_flawed_variant_stops_failing(tmp_path: Path) -> None:
    """If the "broken" variant were the correct protocol, check.sh must say so."""
    _require_tools()
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(VERIFY / "session.pml", src / "session.pml")
    (src / "session_broken.pml").write_text('#include "session.pml"\n')
    result = _check(tmp_path, src=src, only="broken-sequence")
    assert result.returncode == 1, result.output
    assert result.rows["broken-sequence"]["verdict"] == "FAILED (no counterexample)"
