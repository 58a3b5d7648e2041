"""Every script in examples/ runs at its small size (``--small``) and ends by printing numbers."""
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted(p for p in (Path(__file__).parents[1] / "examples").glob("[a-z]*.py"))


def test_the_examples_are_found():
    assert len(EXAMPLES) >= 7


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_at_small_size(script):
    proc = subprocess.run([sys.executable, script.name, "--small"], cwd=script.parent, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    numbers = [float(n) for n in re.findall(r"-?\d+\.\d+", last)]
    assert numbers and all(math.isfinite(n) for n in numbers), last
