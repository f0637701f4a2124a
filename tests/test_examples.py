"""Run each script in ``examples/`` as a subprocess and check the lines it prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

EXPECTED = {
    "copy_pond.py": [
        "sender: sending a green pond with 7 frogs",
        "receiver: got pond: green, 7 frogs",
        "sender: pond arrived safe and sound",
        "sender: sending a black pond with 13 frogs",
        "sender: receiver refused SecretPond: InsecureJelly",
        "sender: sending a blue pond with 3 frogs",
        "receiver: got pond: blue, 3 frogs",
        "sender: pond arrived safe and sound",
    ],
    "frog_pond.py": [
        "sender: sending a green pond with 3 frogs and 4 toads",
        "receiver: got a ReceiverPond: {'color': 'green', 'frogsAndToads': 7}",
        "receiver: green pond, frogsAndToads = 7",
        "sender: pond arrived safe and sound",
    ],
    "duck_pond.py": [
        "slave: got a SlaveDuckPond",
        "slave: 2 ducks: Donald, Daisy",
        "master: observers: 1",
        "master: adding Scrooge",
        "slave: 3 ducks: Donald, Daisy, Scrooge",
        "master: removing Donald",
        "slave: 2 ducks: Daisy, Scrooge",
        "slave: dropping the pond",
        "master: a slave stopped observing",
        "master: observers: 0",
    ],
}


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(Path("examples", script))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    report = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, report
    assert "Traceback" not in result.stderr, report
    lines = result.stdout.splitlines()
    # Every expected line, in this order (other lines may come between).
    position = 0
    for line in EXPECTED[script]:
        assert line in lines[position:], f"missing {line!r} (in order)\n{report}"
        position = lines.index(line, position) + 1
