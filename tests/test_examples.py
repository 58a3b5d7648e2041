"""Every script in examples/ runs at its small size (``--small``) and ends by printing numbers.

Each runs in this process, as ``python script.py --small`` would from its folder (``__main__``, its folder on
``sys.path``): the import of jaxvi and its small compilations are paid once for all of them, not once a script."""
import math
import re
import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted(p for p in (Path(__file__).parents[1] / "examples").glob("[a-z]*.py"))


def test_the_examples_are_found():
    assert len(EXAMPLES) >= 7


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_at_small_size(script, monkeypatch, capsys):
    monkeypatch.chdir(script.parent)
    monkeypatch.syspath_prepend(str(script.parent))
    monkeypatch.setattr(sys, "argv", [script.name, "--small"])
    monkeypatch.delitem(sys.modules, "_size", raising=False)  # reads --small from sys.argv when imported
    runpy.run_path(str(script), run_name="__main__")
    last = capsys.readouterr().out.strip().splitlines()[-1]
    numbers = [float(n) for n in re.findall(r"-?\d+\.\d+", last)]
    assert numbers and all(math.isfinite(n) for n in numbers), last
