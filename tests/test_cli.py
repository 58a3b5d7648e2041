"""`jaxvi demo --quick` runs end to end and shows log p(D) = ELBO + KL."""
import numpy as np
import pytest

from jaxvi.cli import main, demo


def test_demo_shows_the_evidence_identity(capsys):
    numbers = demo(quick=True)
    closed, gradient = numbers["EM, closed-form M-step"], numbers["EM, gradient (L-BFGS) M-step"]
    np.testing.assert_allclose(gradient, closed, rtol=1e-3)
    bound, gap = numbers["exact posterior q = p(z|x)"]
    assert abs(gap) < 1e-3
    blurred_bound, blurred_gap = numbers["blurred q"]
    assert blurred_gap > 1.0 and blurred_bound < bound
    np.testing.assert_allclose(blurred_bound + blurred_gap, bound + gap, rtol=1e-5)
    assert "log p(D)" in capsys.readouterr().out


def test_main_lists_the_demo_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "demo" in capsys.readouterr().out
