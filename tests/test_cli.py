"""`jaxvi demo` runs end to end and writes a report whose numbers are finite and consistent."""
import json
import math
import pathlib
import re

import pytest

from jaxvi.cli import main
from jaxvi.demo import STAMP, source_digest

MADE = pathlib.Path(__file__).resolve().parents[1] / "jaxvi-report"  # where `make demo` writes its report

FILES = ("report.md", "factor_analysis.png", "gmm_clusters.png", "hmm_states.png", "vae_digits.png")


def made_by_this_code(folder: pathlib.Path) -> bool:
    """Whether ``folder`` holds a whole report of a full demo run by the code under test (its stamp, written
    last, names this source)."""
    try:
        stamp = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("source") == source_digest() and stamp.get("quick") is False


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The report of the README's `make demo` where this very code wrote it (CI runs it just before the tests: the
    full demo is checked, and not run twice); else a quick demo's, run here."""
    if made_by_this_code(MADE):
        return MADE
    out = tmp_path_factory.mktemp("report")
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert made_by_this_code(out) is False and json.loads((out / STAMP).read_text()) == {
        "source": source_digest(), "quick": True}
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
    three = [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip("|"))]
             for line in text.split("## 5.", 1)[1].split("\n## ", 1)[0].splitlines() if line.startswith("| ")]
    rows = {cells[0].split(" ")[0]: cells for cells in three[1:]}
    assert set(rows) == {"EM", "CAVI", "SVI"}
    assert int(rows["CAVI"][5]) < int(rows["EM"][5])                # Variational Bayes empties surplus components
    svi_elbo, svi_log_p, svi_kl = (float(rows["SVI"][i]) for i in (2, 3, 4))
    assert abs(svi_elbo + svi_kl - svi_log_p) < 0.02 and svi_kl > 0
    topics = [[c.strip() for c in line.strip("|").split("|")]
              for line in text.split("## 6.", 1)[1].splitlines() if line.startswith("| ")][1:]
    assert [row[0].split(",")[0] for row in topics] == ["batch", "online"]
    assert 1.0 < float(topics[0][4]) < 300                           # held out: better than uniform over V = 300 words


def test_main_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "demo" in out


def test_arguments_the_command_cannot_take_are_usage_errors_before_any_work(tmp_path, capsys):
    """Each of these printed a Python traceback (ValueError, FileExistsError, FileNotFoundError; a bad --cache only
    after a benchmark had started): now argparse's usage line and the message, status 2, and nothing run."""
    afile = tmp_path / "afile"
    afile.write_text("")
    cases = [(["bench", "nope"], "bench names: expected benchmarks among"),
             (["bench", "--repeats", "0", "gmm_em"], "bench repeats: expected an integer >= 1, got 0"),
             (["bench", "--scaling", "--repeats", "2"], "bench --scaling: takes neither --repeats nor --cache"),
             (["bench", "--out", str(afile), "gmm_em"], f"--out: cannot make the folder {afile}"),
             (["demo", "--out", str(afile)], f"--out: cannot make the folder {afile}"),
             (["bench", "--cache", str(afile), "--quick", "gmm_em"], f"--cache: cannot make the folder {afile}")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and f"jaxvi: error: {message}" in capsys.readouterr().err, argv


def test_bench_quick_runs_one_benchmark_and_skips_a_missing_peer(tmp_path, capsys):
    import json

    assert main(["bench", "gmm_em", "hmm_em", "--quick", "--without", "hmmlearn", "--out", str(tmp_path),
                 "--cache"]) == 0
    assert "skipping hmm_em: its peer hmmlearn is not installed" in capsys.readouterr().out
    report = json.loads((tmp_path / "bench.json").read_text())
    assert {"device", "jax", "commit", "quick", "repeats", "cache", "benchmarks"} <= set(report)
    assert report["quick"] is True and report["repeats"] == 1 and report["cache"] is True
    assert report["benchmarks"]["hmm_em"] == {"skipped": "skipping hmm_em: its peer hmmlearn is not installed "
                                                         "(pip install hmmlearn)"}
    gmm = report["benchmarks"]["gmm_em"]
    assert gmm["peer"] == "scikit-learn" and [r["cache"] for r in gmm["runs"]] == ["cold", "warm"]
    assert any((tmp_path / "cache" / "gmm_em").iterdir())  # the cold run left its compiled code there
    for summary in (gmm["summary"], gmm["cold"]):
        for key in ("n_init=1.speedup_with_compile", "n_init=8.speedup_compiled", "n_init=1.log_likelihood_rel_diff"):
            value = summary[key]
            assert math.isfinite(value["median"]) and value["min"] <= value["median"] <= value["max"]
        assert summary["n_init=1.log_likelihood_rel_diff"]["median"] < 1e-4   # the same fit as scikit-learn
    assert "## gmm_em" in (tmp_path / "bench.md").read_text() and "| cold |" in (tmp_path / "bench.md").read_text()
    with pytest.raises(SystemExit):
        main(["bench", "no_such_benchmark", "--out", str(tmp_path)])
    assert "jaxvi: error: bench names: expected benchmarks among" in capsys.readouterr().err


def test_bench_scaling_times_jaxvi_and_scikit_learn_at_growing_n(tmp_path, capsys):
    """``jaxvi bench --scaling``: the same GMM fit as scikit-learn at each N, jaxvi's compile time measured
    directly (within its first call), a PNG, and a family whose peer is missing skipped with a line."""
    import json

    assert main(["bench", "--scaling", "gmm", "svi", "--quick", "--without", "numpyro", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "scaling.json").read_text())
    gmm = report["summary"]["gmm"]
    assert gmm["sizes"] == [1_000, 10_000] and "svi" not in report["summary"]
    assert max(gmm["log_likelihood_rel_diff"]) < 1e-5
    for total, compile_s, run in zip(gmm["jaxvi_total_s"], gmm["jaxvi_compile_s"], gmm["jaxvi_run_s"]):
        assert 0 < compile_s < total and 0 < run < total
    assert 0 < gmm["gflops"][-1] < gmm["matmul_gflops"]
    text = (tmp_path / "scaling.md").read_text()
    assert "skipped: its peer NumPyro is not installed (numpyro)" in text and "## gmm" in text
    assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        main(["bench", "--scaling", "gmm_em", "--out", str(tmp_path)])
    assert "jaxvi: error: bench names: with --scaling, expected families among" in capsys.readouterr().err


def test_overtakes_is_the_size_from_which_jaxvi_stays_ahead():
    import importlib.util

    from jaxvi.bench import benchmarks_dir

    spec = importlib.util.spec_from_file_location("scaling_script", benchmarks_dir() / "scaling.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    sizes = [1, 10, 100, 1000]
    assert script.overtakes(sizes, [5.0, 3.0, 2.0, 1.0], [1.0, 4.0, 9.0, 20.0]) == 10
    assert script.overtakes(sizes, [1.0, 5.0, 2.0, 1.0], [2.0, 4.0, 9.0, 20.0]) == 100  # ahead, behind, ahead for good
    assert script.overtakes(sizes, [1.0, 1.0, 1.0, 9.0], [2.0, 2.0, 2.0, 2.0]) is None  # behind at the largest
