"""Every plot renders to a PNG from real fits."""
import jax
import matplotlib
import numpy as np
import optax

import jaxvi

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def test_trace_and_evidence_gap_render(tmp_path):
    x = np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32)
    fa = jaxvi.models.factor_analysis(1)
    em = jaxvi.infer(fa.model, jaxvi.EM(m_step=fa.m_step), x, key=jax.random.key(0), progress=False)
    svi = jaxvi.infer(fa.model, jaxvi.SVI(num_steps=300, optimizer=optax.adam(3e-2)), x, key=jax.random.key(0),
                      progress=False)
    for name, draw in (("trace", lambda ax: jaxvi.plot.trace({"EM": em, "SVI": svi}, ax=ax, per_datum=60)),
                       ("gap", lambda ax: jaxvi.plot.evidence_gap({"EM": em, "SVI": svi}, ax=ax)),
                       ("single", lambda ax: jaxvi.plot.trace(em, ax=ax))):
        fig, ax = plt.subplots()
        assert draw(ax) is ax
        path = tmp_path / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    ax = jaxvi.plot.evidence_gap([em, svi])          # a new figure when no axes are given
    heights = [patch.get_height() for patch in ax.patches]
    assert len(heights) == 4 and heights[2] == 0.0 and heights[3] > 0   # EM's gap is 0, SVI's is not
    plt.close("all")


def test_summary_and_save_load_round_trip(tmp_path):
    x = np.random.default_rng(1).normal(size=(40, 2)).astype(np.float32)
    gm = jaxvi.models.gaussian_mixture(2)
    method = jaxvi.EM(m_step=gm.m_step, tol=1e-4)
    result = jaxvi.infer(gm.model, method, x, key=jax.random.key(0), progress=False)
    text = result.summary()
    assert "objective (log p(D))" in text and "params.means" in text and "(2, 2) float32" in text
    # the method as it was given, its numbers plain (the fit holds tol as a float32 array: "tol=Array(0.0001, ...)")
    assert text.splitlines()[0].split(None, 1)[1] == repr(method) and "tol=0.0001," in repr(method)
    path = tmp_path / "fit.npz"
    result.save(path)
    back = jaxvi.load(path, like=result)
    assert type(back.params) is type(result.params)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(result)):
        np.testing.assert_array_equal(a, b)
    plain = jaxvi.load(path)
    np.testing.assert_array_equal(plain["params"][".means"], result.params.means)
    svi = jaxvi.infer(gm.model, jaxvi.SVI(discrete="guide", num_particles=2, num_steps=20), x, key=jax.random.key(1),
                      progress=False)
    svi.save(tmp_path / "svi.npz")
    again = jaxvi.load(tmp_path / "svi.npz", like=svi)
    np.testing.assert_array_equal(again.guide_params["logits"], svi.guide_params["logits"])
    for a, b in zip(jax.tree_util.tree_leaves(again.diagnostics.opt_state), jax.tree_util.tree_leaves(svi.diagnostics.opt_state)):
        np.testing.assert_array_equal(a, b)
    assert "gap" in svi.summary()
