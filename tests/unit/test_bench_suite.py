"""The bench command's own checks, before it starts any server."""

from __future__ import annotations

import subprocess
import sys


def test_an_unknown_scenario_is_refused_naming_the_choices() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "callsight.loadtest", "bench", "--scenarios", "steady,stedy"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "unknown scenarios ['stedy']" in done.stderr
    assert "paced, steady, small, saturated" in done.stderr
