"""`jaxvi demo --quick` runs end to end and writes a report whose numbers are finite and consistent."""
import math
import os
import re

import pytest

from jaxvi.cli import main

FILES = ("report.md", "factor_analysis.png", "gmm_clusters.png", "hmm_states.png", "vae_digits.png")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    return out


def test_demo_writes_every_report_file(report):
    for name in FILES:
        path = report / name
        assert path.exists() and path.stat().st_size > 1000 or name == "report.md", name
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def table_rows(text, heading):
    """The identity table of one section: {fit: (ELBO, KL, log p)}."""
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"-?\d+\.\d+", cells[1]):
            rows[cells[0]] = tuple(float(c) for c in cells[1:4])
    return rows


def test_every_number_in_the_report_is_finite_and_the_identity_holds(report):
    text = (report / "report.md").read_text()
    assert "nan" not in text.lower() and "inf" not in re.sub(r"\binformation\b", "", text.lower())
    numbers = [float(n) for n in re.findall(r"-?\d+\.\d+", text)]
    assert len(numbers) > 20 and all(math.isfinite(n) for n in numbers)
    fa = table_rows(text, "## 1.")
    assert len(fa) == 3
    for elbo, kl, log_p in fa.values():
        assert abs(elbo + kl - log_p) < 0.02                       # ELBO + KL = log p(D), as printed
    em, svi, amortized = fa.values()
    assert abs(em[1]) < 0.01 and svi[1] > 0 and amortized[1] > 0      # EM has no gap; VI pays a KL
    gmm = table_rows(text, "## 2.")
    assert len(gmm) == 2 and list(gmm.values())[1][1] > 0
    accuracy = float(re.search(r"true regime at (\d+\.\d)%", text).group(1))
    assert accuracy > 90
    elbo, iwae = re.search(r"ELBO (-?\d+\.\d+) nats per image, .*?\) (-?\d+\.\d+) ±", text).groups()
    assert float(iwae) > float(elbo)


def test_main_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "demo" in out
