"""The input-check table in docs/ names tests that exist."""
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_every_input_check_names_a_test_that_exists():
    table = (ROOT / "docs" / "input-checks.md").read_text()
    references = re.findall(r"(tests/[\w/]+\.py)::(test_\w+)", table)
    assert len(references) >= 25
    for path, name in references:
        assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), f"{path}::{name} is not a test"
