"""``jaxvi demo``: one model fitted three ways, and the evidence identity shown with numbers.

Writes ``jaxvi-report/`` (a markdown report, PNG plots and ``made_by.json``, which code wrote them) from bundled or
simulated data only:

1. factor analysis of scikit-learn's wine data, by EM (exact), SVI (a mean-field q per datum) and
   amortized inference (an encoder): each fit's ELBO, the exact log p(D) at its own θ, the gap;
2. a Gaussian mixture of the wine data by EM and by SVI with a categorical q per datum;
3. a Gaussian HMM on a SIMULATED regime-switching series, by EM, with the Viterbi path;
4. a VAE on scikit-learn's digits, with the test log-likelihood (IWAE) and reconstructions;
5. one mixture of the wine data with more components than it needs, by EM, CAVI (Variational Bayes) and SVI;
6. LDA on a SIMULATED corpus by batch and online (stochastic) variational Bayes, its topics recovered.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

__all__ = ["STAMP", "run", "source_digest"]

STAMP = "made_by.json"  # which code wrote the report (``source_digest``) and whether it was a quick run


def run(out_dir: str = "jaxvi-report", quick: bool = False, progress: bool = True) -> dict:
    """Runs the demo, writes the report into ``out_dir`` and returns its numbers.

    Args:
      out_dir: where ``report.md`` and the PNGs go (created if absent).
      quick: small fits (a smoke run, ~1 minute).
      progress: show progress bars.
    """
    import jax
    import matplotlib

    matplotlib.use("Agg")
    os.makedirs(out_dir, exist_ok=True)
    started = time.perf_counter()
    numbers: dict[str, Any] = {}
    sections = [f"# jaxvi demo\n\njax {jax.__version__} on {jax.devices()[0].platform}"
                f"{' (quick run: small fits)' if quick else ''}.\n"]
    for part in (_factor_analysis, _mixture, _hmm, _vae, _three_ways, _topics):
        print(f"jaxvi demo: {part.__doc__.splitlines()[0]}", flush=True)
        text, values = part(out_dir, quick, progress)
        sections.append(text)
        numbers.update(values)
    seconds = time.perf_counter() - started
    sections.append(f"\nThe whole demo took {seconds:.0f} s.\n")
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(sections))
    with open(os.path.join(out_dir, STAMP), "w") as f:  # written last: a report stamped is a whole one
        json.dump({"source": source_digest(), "quick": quick}, f)
    print(f"jaxvi demo: the report is in {os.path.abspath(path)}", flush=True)
    numbers["seconds"] = seconds
    return numbers


def source_digest() -> str:
    """The report's stamp (``STAMP``): which code wrote it, the digest of the jaxvi package's Python files that the
    compiled-code cache keys on too, with the versions of jax and NumPy."""
    import jax

    from jaxvi.run.stored import jaxvi_source_digest

    return f"{jaxvi_source_digest()} jax {jax.__version__} numpy {np.__version__}"


def _wine() -> np.ndarray:
    from sklearn.datasets import load_wine

    x = load_wine().data
    return ((x - x.mean(0)) / x.std(0)).astype(np.float32)


def _identity_table(rows: list[tuple[str, float, float]], n: int) -> str:
    lines = ["| fit | ELBO | + KL(q ‖ p) | = log p(D) at its θ | per datum |", "|---|---|---|---|---|"]
    for label, elbo, log_p in rows:
        gap = log_p - elbo
        gap = 0.0 if abs(gap) < 0.005 else gap  # no "-0.00" from float32 rounding of an exact 0
        lines.append(f"| {label} | {elbo:.2f} | {gap:.2f} | {log_p:.2f} | {log_p / n:.4f} |")
    return "\n".join(lines)


def _factor_analysis(out_dir, quick, progress):
    """factor analysis of the wine data, three ways (EM, SVI, amortized)"""
    import jax
    import matplotlib.pyplot as plt
    import optax

    import jaxvi

    x = _wine()
    n = len(x)
    fa = jaxvi.models.factor_analysis(3)
    steps = 300 if quick else 3000
    methods = {
        "EM (exact E-step)": jaxvi.EM(m_step=fa.m_step, max_iter=500, tol=5e-5),
        "SVI (mean-field q per datum)": jaxvi.SVI(num_steps=steps, num_particles=4, estimator="stl",
                                                  optimizer=optax.adam(optax.exponential_decay(3e-2, steps, 0.05))),
        "amortized (MLP encoder)": jaxvi.Amortized(encoder=jaxvi.nn.mlp((32,)), num_steps=steps, batch_size=32,
                                                   num_particles=4, objective="stl", validation=0.0,
                                                   optimizer=optax.adam(optax.exponential_decay(1e-2, steps, 0.1))),
    }
    results, rows = {}, []
    for i, (label, method) in enumerate(methods.items()):
        result = jaxvi.infer(fa.model, method, x, key=jax.random.key(i), progress=progress)
        log_p = float(jaxvi.evidence(fa.model, result.params, x).log_evidence)
        if isinstance(method, jaxvi.Amortized):
            elbo = float(method.elbo(result, x, key=jax.random.key(10), num_particles=1000)[0])
        else:
            elbo = float(result.objective)
        results[label] = result
        rows.append((label, elbo, log_p))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    jaxvi.plot.trace(results, ax=axes[0], per_datum=n)
    axes[0].set_title("the objective of every iteration (EM: log p(D); VI: its ELBO)")
    _identity_bars(axes[1], rows, n)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "factor_analysis.png"), dpi=100)
    plt.close(fig)
    text = ("\n## 1. Factor analysis of the wine data, fitted three ways\n\n"
            f"{n} wines, 13 standardised measurements, 3 factors. Every fit's ELBO plus the KL divergence of its q "
            "from the exact posterior is the exact log p(D) at that fit's θ (an exact Gaussian integral). EM's q "
            "is the exact posterior, so its KL is 0; a mean-field q per datum pays for the correlations it "
            "cannot hold; an encoder pays in addition for serving every datum with one network.\n\n"
            + _identity_table(rows, n) + "\n\n![traces and the identity](factor_analysis.png)\n")
    return text, {f"fa {label}": {"elbo": elbo, "log_p": log_p} for label, elbo, log_p in rows}


def _identity_bars(ax, rows, n):
    labels = [label.split(" (")[0] for label, _, _ in rows]
    elbo = np.array([e for _, e, _ in rows]) / n
    log_p = np.array([p for _, _, p in rows]) / n
    bottom = min(elbo.min(), log_p.min()) - 0.1
    ax.bar(labels, elbo - bottom, bottom=bottom, label="ELBO")
    ax.bar(labels, log_p - elbo, bottom=elbo, hatch="//", fill=False, label="KL(q ‖ p(z | x))")
    ax.axhline(log_p.max(), color="k", lw=0.8, ls=":")
    ax.set_ylabel("nats per datum")
    ax.set_title("log p(D) = ELBO + KL, per fit at its own θ")
    ax.legend()


def _mixture(out_dir, quick, progress):
    """a Gaussian mixture of the wine data by EM and by SVI"""
    import jax
    import matplotlib.pyplot as plt
    import optax

    import jaxvi

    x = _wine()
    n = len(x)
    gm = jaxvi.models.gaussian_mixture(3, covariance="diag")
    em = jaxvi.infer(gm.model, jaxvi.EM(m_step=gm.m_step, n_init=8, max_iter=300, tol=5e-5), x,
                     key=jax.random.key(0), progress=progress)
    steps = 300 if quick else 2000
    svi = jaxvi.infer(gm.model, jaxvi.SVI(discrete="guide", num_particles=8, num_steps=steps, num_eval_particles=1000,
                                          optimizer=optax.adam(5e-2)), x, key=jax.random.key(1), progress=progress)
    rows = [("EM (exact posterior)", float(em.objective), float(em.objective)),
            ("SVI (categorical q per datum)", float(svi.objective), float(svi.diagnostics.log_evidence))]
    from sklearn.datasets import load_wine

    labels = load_wine().target
    components = np.linalg.svd(x - x.mean(0), full_matrices=False)[2][:2]
    projected = x @ components.T
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, (title, result) in zip(axes, (("EM", em), ("SVI", svi))):
        probs = np.asarray(result.posterior(x).probs) if title == "EM" else np.asarray(
            jax.nn.softmax(result.guide_params["logits"], axis=-1))
        ax.scatter(projected[:, 0], projected[:, 1], c=probs[:, :3], s=18, edgecolors="none")
        for k in range(3):
            ax.scatter(*projected[labels == k].mean(0), marker="x", color="k")
        ax.set_title(f"{title}: q(z) as colour (x: cultivar means)")
        ax.set_xlabel("principal component 1")
        ax.set_ylabel("principal component 2")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "gmm_clusters.png"), dpi=100)
    plt.close(fig)
    agreement = float(np.max([np.mean(np.argmax(np.asarray(em.posterior(x).probs), 1) == perm[labels])
                              for perm in _permutations(3)]))
    text = ("\n## 2. A Gaussian mixture of the wine data\n\n"
            "Three diagonal-covariance components. EM's log p(D) is exact; SVI fits θ and a categorical q per datum "
            "by score-function gradients, and its result carries the exact log p(D) at its own θ, so the gap is "
            f"known. EM's clusters match the three cultivars for {agreement:.0%} of the wines.\n\n"
            + _identity_table(rows, n) + "\n\n![clusters](gmm_clusters.png)\n")
    return text, {"gmm em": float(em.objective), "gmm svi elbo": float(svi.objective),
                  "gmm svi log_p": float(svi.diagnostics.log_evidence), "gmm agreement": agreement}


def _permutations(k):
    from itertools import permutations

    return [np.array(p) for p in permutations(range(k))]


def _hmm(out_dir, quick, progress):
    """a Gaussian HMM on a simulated regime-switching series"""
    import jax
    import matplotlib.pyplot as plt

    import jaxvi

    rng = np.random.default_rng(0)
    T = 600 if quick else 2000
    stay = np.array([0.98, 0.97, 0.95])
    transition = np.where(np.eye(3, dtype=bool), stay[:, None], (1 - stay[:, None]) / 2)
    regimes = np.zeros(T, int)
    for t in range(1, T):
        regimes[t] = rng.choice(3, p=transition[regimes[t - 1]])
    levels, scales = np.array([-1.0, 0.5, 2.0]), np.array([0.6, 0.3, 0.8])
    series = (levels[regimes] + scales[regimes] * rng.normal(size=T)).astype(np.float32)
    hmm = jaxvi.models.gaussian_hmm(3)
    result = jaxvi.infer(hmm.model, jaxvi.EM(m_step=hmm.m_step, n_init=4, max_iter=200, tol=1e-2), series[None, :, None],
                         key=jax.random.key(0), progress=progress)
    post = result.posterior(series[None, :, None])
    path = np.asarray(post.mode())[0]
    order = np.argsort(np.asarray(result.params.emission.means)[:, 0])
    decoded = np.argsort(order)[path]                       # states numbered by their mean, like the truth
    accuracy = float(np.mean(decoded == regimes))
    fig, ax = plt.subplots(figsize=(12, 3.5))
    ax.plot(series, lw=0.6, color="0.5", label="series")
    ax.plot(levels[regimes], lw=1.5, label="true regime level")
    ax.plot(np.sort(np.asarray(result.params.emission.means)[:, 0])[decoded], lw=1.0, ls="--",
            label="Viterbi path (fitted state means)")
    ax.set_xlabel("t")
    ax.legend(loc="upper right")
    ax.set_title("a simulated 3-regime series and the HMM's decoded states")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "hmm_states.png"), dpi=100)
    plt.close(fig)
    text = ("\n## 3. A Gaussian HMM on a simulated regime-switching series\n\n"
            f"The series is SIMULATED: {T} steps from a 3-state chain with sticky transitions and Gaussian levels. "
            f"EM (exact forward-backward E-step) reaches log p(D) = {float(result.objective):.2f}; the Viterbi path "
            f"recovers the true regime at {accuracy:.1%} of the steps.\n\n![decoded states](hmm_states.png)\n")
    return text, {"hmm log_p": float(result.objective), "hmm accuracy": accuracy}


def _vae(out_dir, quick, progress):
    """a VAE on the digits, with its test log-likelihood"""
    import jax
    import matplotlib.pyplot as plt
    import optax
    from sklearn.datasets import load_digits

    import jaxvi

    x = (load_digits().data > 8).astype(np.float32)
    train, test = x[:1500], x[1500:]
    vae = jaxvi.models.vae(8, 64, decoder=jaxvi.nn.mlp((256, 256)))
    method = jaxvi.Amortized(num_epochs=10 if quick else 150, batch_size=128, optimizer=optax.adam(1e-3),
                             validation=0.1, patience=15)
    result = jaxvi.infer(vae.model, method, train, key=jax.random.key(0), progress=progress)
    q = result.posterior(test)
    samples = 200 if quick else 2000
    iwae = jaxvi.evidence(vae.model, result.params, test, key=jax.random.key(1), posterior=q, num_samples=samples)
    elbo, _ = jaxvi.vi.guide_elbo(vae.model, result.params, test, q, key=jax.random.key(2), num_particles=100)
    recon = np.asarray(vae.reconstruct(result, test[:8]))
    drawn = np.asarray(vae.sample(result, jax.random.key(3), 8))
    fig, axes = plt.subplots(3, 8, figsize=(8, 3.3))
    for row, (title, images) in enumerate((("test digit", test[:8]), ("reconstruction", recon), ("sample", drawn))):
        for col in range(8):
            axes[row, col].imshow(images[col].reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
            axes[row, col].axis("off")
        axes[row, 0].set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "vae_digits.png"), dpi=100)
    plt.close(fig)
    m = len(test)
    text = ("\n## 4. A VAE on the digits\n\n"
            f"1,500 binarised 8x8 digits train (10% of them held out for early stopping), {m} test. An MLP encoder "
            f"and decoder (256-256), 8 latent dimensions, {int(result.diagnostics.epochs)} epochs. On the test "
            f"digits: ELBO {float(elbo) / m:.3f} nats per image, log-likelihood by importance sampling from the "
            f"encoder (IWAE-{samples}) {float(iwae.log_evidence) / m:.3f} ± {float(iwae.stderr) / m:.3f}: the "
            "bound sits below the evidence by the amortized q's KL.\n\n![digits](vae_digits.png)\n")
    return text, {"vae test elbo": float(elbo) / m, "vae test iwae": float(iwae.log_evidence) / m}


SURPLUS_K = 8  # components offered to the wine data in section 5 (it has three cultivars)


def _three_ways(out_dir, quick, progress):
    """one mixture with surplus components by EM, CAVI and SVI"""
    import jax
    import optax

    import jaxvi

    wine = _wine()
    x = (wine @ np.linalg.svd(wine - wine.mean(0), full_matrices=False)[2][:2].T).astype(np.float32)
    gm = jaxvi.models.gaussian_mixture(SURPLUS_K, covariance="full")
    em = jaxvi.infer(gm.model, jaxvi.EM(m_step=gm.m_step, n_init=4, max_iter=300, tol=5e-5), x,
                     key=jax.random.key(0), progress=progress)
    bayes = jaxvi.models.bayesian_gaussian_mixture(x, SURPLUS_K, "full")
    cavi = jaxvi.infer(bayes, jaxvi.CAVI(max_iter=300, tol=1e-4, n_init=4), x, key=jax.random.key(0),
                       progress=progress)
    svi = jaxvi.infer(gm.model, jaxvi.SVI(discrete="guide", num_particles=8, num_steps=300 if quick else 2000,
                                          num_eval_particles=1000, optimizer=optax.adam(5e-2)), x,
                      key=jax.random.key(1), progress=progress)
    used = {"EM": np.asarray(jax.nn.softmax(em.params.logits)),
            "CAVI": np.asarray(cavi.posterior().globals["theta"]["weights"].mean()),
            "SVI": np.asarray(jax.nn.softmax(svi.params.logits))}
    counts = {name: int(np.sum(w > 0.01)) for name, w in used.items()}
    lines = ["| fit | what its objective bounds | objective | exact log p(D) at its θ | KL(q ‖ p) | components "
             "with weight > 1% |", "|---|---|---|---|---|---|",
             f"| EM | log p(D \\| θ̂), θ a point | {float(em.objective):.2f} | {float(em.objective):.2f} | 0.00 | "
             f"{counts['EM']} |",
             f"| CAVI (Variational Bayes) | log p(D), θ integrated out under its priors | {float(cavi.objective):.2f} | "
             f"(no closed form) | unknown, ≥ 0 | {counts['CAVI']} |",
             f"| SVI (categorical q per datum) | log p(D \\| θ), θ a point | {float(svi.objective):.2f} | "
             f"{float(svi.diagnostics.log_evidence):.2f} | {float(svi.diagnostics.log_evidence - svi.objective):.2f} "
             f"| {counts['SVI']} |"]
    text = (f"\n## 5. EM, CAVI, SVI: one mixture three ways\n\n{SURPLUS_K} full-covariance components for the "
            "wine data's first two principal components (three cultivars). EM and SVI fit the weights, means and "
            "variances as points: nothing in their objective penalises a surplus component (EM gives "
            f"{counts['EM']} components over 1% of the weight, SVI {counts['SVI']}). CAVI fits the Bayesian mixture "
            "(`jaxvi.models.bayesian_gaussian_mixture`, scikit-learn's priors, a Dirichlet(1/K) on the weights), "
            "its updates derived from the log-joint: its bound is on the evidence with every parameter integrated "
            "out, which pays for each component it uses, so the surplus ones empty. The objectives bound different "
            "quantities (a point's likelihood against the marginal evidence) and are not ranked against each "
            "other.\n\n" + "\n".join(lines) + "\n")
    return text, {"three ways em": float(em.objective), "three ways cavi": float(cavi.objective),
                  "three ways svi elbo": float(svi.objective), "components em": counts["EM"],
                  "components cavi": counts["CAVI"], "components svi": counts["SVI"]}


def _topics(out_dir, quick, progress):
    """LDA on a simulated corpus by batch and online variational Bayes"""
    import jax
    from scipy.optimize import linear_sum_assignment

    import jaxvi

    rng = np.random.default_rng(0)
    K, V, n = 6, 300, 400 if quick else 3000
    topics = rng.dirichlet(np.full(V, 0.05), K)
    counts = np.stack([rng.multinomial(rng.poisson(80) + 1, p @ topics)
                       for p in rng.dirichlet(np.full(K, 0.3), n + 200)]).astype(np.float32)
    length = int((counts > 0).sum(1).max())
    docs = jaxvi.models.bag_of_words(counts[:n], length=length)
    heldout = jaxvi.models.bag_of_words(counts[n:], length=length)
    model = jaxvi.models.lda(docs, K, V)
    rows, found = [], {}
    for name, method in (("batch", jaxvi.CAVI(max_iter=50 if quick else 200, n_init=1 if quick else 4)),
                         ("online, minibatches of 100", jaxvi.CAVI(max_iter=3 * n // 100, batch_size=100))):
        started = time.perf_counter()
        result = jaxvi.infer(model, method, docs, key=jax.random.key(0), progress=progress)
        seconds = time.perf_counter() - started
        fitted = np.asarray(result.posterior().globals["topics"].mean())
        distance = np.abs(fitted[:, None] - topics[None]).sum(-1)        # L1 between fitted and true topics
        matched = distance[linear_sum_assignment(distance)]
        perplexity = float(jaxvi.models.lda_perplexity(result, heldout))
        found[name] = (float(np.median(matched)), perplexity)
        rows.append(f"| {name} | {int(result.n_iter)} | {seconds:.1f} | {float(result.objective) / counts[:n].sum():.4f} "
                    f"| {perplexity:.1f} | {np.median(matched):.3f} | {int(np.sum(matched < 0.5))} of {K} |")
    text = ("\n## 6. Topics: LDA by batch and online variational Bayes\n\n"
            f"The corpus is SIMULATED: {n} documents of about 80 tokens from LDA with {K} topics over {V} words "
            "(200 more held out). `jaxvi.models.lda` is LDA written as a log-joint; `jaxvi.CAVI` derives its "
            "updates: every document's topic proportions and its words' topics by coordinate ascent, then the "
            "topics (batch, all the documents every iteration: scikit-learn's batch `LatentDirichletAllocation`), "
            "or a natural-gradient step of the topics per minibatch (online: scikit-learn's `\"online\"`, gensim's "
            "`LdaModel`). Held-out perplexity is scikit-learn's definition (its topic term included). The fitted "
            "topics are matched to the true ones (Hungarian, on L1 distance; 2 would be disjoint): the median "
            "distance, and how many are within 0.5 (LDA's bound has local optima, where two true topics share a "
            "fitted one: restarts, `CAVI(n_init)`, help).\n\n| fit | steps | s (with compile) | bound per token | "
            "held-out perplexity | median L1 to its true topic | topics within 0.5 |\n|---|---|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")
    return text, {"lda batch median topic distance": found["batch"][0], "lda batch perplexity": found["batch"][1],
                  "lda online median topic distance": found["online, minibatches of 100"][0]}
