"""LDA by batch and online variational Bayes: jaxvi.CAVI against scikit-learn's LatentDirichletAllocation and
gensim's LdaModel, same corpus, same initial topics, same iterations.

Corpora: ``lee``, gensim's Lee news corpus from its test data (CountVectorizer, English stop words, words in at
least 2 documents), the last 10% of documents held out; ``synthetic``, documents drawn from LDA (K topics over
V words with a Dirichlet(0.05) per topic, proportions Dirichlet(0.5), about ``--words`` tokens each), 2,000 more
held out. Every library starts from the same topics (Gamma(100, 1/100) draws, scikit-learn's own start),
every document from gamma = 1 in every E-step (scikit-learn and gensim draw it at random; here their draws are
ones), and stops every document at a mean change of 1e-3 (at most 100 updates), their defaults.

- batch: ``--iters`` iterations on all the training documents, every E-step from gamma = 1 for both (jaxvi's
  own fit carries every document's q from one iteration to the next instead, so its bound never falls; here
  its state is reset, the user driving the step, to run scikit-learn's algorithm).
- online: one pass of minibatches of ``--batch`` documents in order, rho_t = (10 + t)^-0.7 (scikit-learn's
  defaults; gensim's offset 11, decay 0.7, the same steps).

jaxvi runs the method protocol in one jitted ``lax.scan`` (compile time measured ahead of time, directly);
scikit-learn runs ``_em_step`` as its ``fit`` does, with ``n_jobs`` = the machine's cores; gensim runs
``LdaModel.update`` (one process; its LdaMulticore needs a process per worker). Held-out perplexity is one
function for all (``jaxvi.models.lda_perplexity`` at each library's topics: scikit-learn's definition).

Usage:
  python benchmarks/lda.py --corpus lee --json benchmarks/results/lda_lee_cpu.json --markdown benchmarks/results/lda_lee_cpu.md
  python benchmarks/lda.py --corpus synthetic --docs 200000 --iters 2 --json benchmarks/results/lda_synthetic_200k_cpu.json \
      --markdown benchmarks/results/lda_synthetic_200k_cpu.md
  python benchmarks/lda.py --quick
  python benchmarks/lda.py --corpus synthetic --scaling 1000,2000,5000,10000,20000 --iters 2 \
      --json benchmarks/results/lda_scaling_cpu.json --markdown benchmarks/results/lda_scaling_cpu.md \
      --plot benchmarks/results/lda_scaling_cpu.png

``--scaling N1,N2,...``: every library's time including compile at each number of training documents (the
same corpus sizes otherwise), drawn against N on log-log axes.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, parse, run_child, spawn, write  # noqa: E402

QUICK = {"corpus": "synthetic", "docs": 2_000, "vocabulary": 500, "topics": 10, "iters": 3, "batch": 256}
TARGET_BATCH, TARGET_ONLINE = 5.0, 3.0  # against scikit-learn batch, against gensim online (including compile)
TAU0, KAPPA, HELD_OUT = 10.0, 0.7, 2_000


def corpus(args):
    """(train counts, held-out counts, L), scipy.sparse CSR, float64; L the most distinct words of any document."""
    import scipy.sparse

    if args.corpus == "lee":
        import gensim
        from sklearn.feature_extraction.text import CountVectorizer

        path = os.path.join(os.path.dirname(gensim.__file__), "test", "test_data", "lee_background.cor")
        with open(path, encoding="utf-8") as f:
            texts = [line for line in f if line.strip()]
        counts = CountVectorizer(stop_words="english", min_df=2).fit_transform(texts).astype(np.float64)
        cut = len(texts) - len(texts) // 10
    else:
        counts = scipy.sparse.load_npz(args.corpus_file) if args.corpus_file else synthetic_counts(args)
        cut = args.docs
    length = int(np.diff(counts.indptr).max())
    return counts[:cut], counts[cut:], length


def synthetic_counts(args):
    """``--docs`` training then ``HELD_OUT`` held-out documents drawn from LDA, scipy.sparse CSR, float64."""
    import scipy.sparse

    rng = np.random.default_rng(0)
    topics = rng.dirichlet(np.full(args.vocabulary, 0.05), args.topics)
    n = args.docs + HELD_OUT
    proportions = rng.dirichlet(np.full(args.topics, 0.5), n)
    lengths = rng.poisson(args.words, n) + 1
    rows = []
    for start in range(0, n, 10_000):  # draw in blocks: n x V probabilities at once would not fit
        block = proportions[start:start + 10_000] @ topics
        rows.append(scipy.sparse.csr_matrix(np.stack([rng.multinomial(m, p) for m, p in
                                                       zip(lengths[start:start + 10_000], block)])))
    return scipy.sparse.vstack(rows).tocsr().astype(np.float64)


def shared_corpus(args, folder: str) -> list[str]:
    """The children's arguments that name the corpus: a synthetic one is drawn once, here, and saved in
    ``folder`` (``args.corpus_file``) for every child to load (drawing 200,000 documents takes minutes)."""
    import scipy.sparse

    shared = ["--corpus", args.corpus, "--docs", str(args.docs), "--vocabulary", str(args.vocabulary), "--topics",
              str(args.topics), "--words", str(args.words), "--iters", str(args.iters), "--batch", str(args.batch)]
    if args.corpus == "synthetic":
        args.corpus_file = os.path.join(folder, f"corpus-{args.docs}.npz")
        scipy.sparse.save_npz(args.corpus_file, synthetic_counts(args), compressed=False)
        shared += ["--corpus-file", args.corpus_file]
    return shared


def spawn_runs(args, runs, folder: str, prefix: str = "") -> dict:
    """Every ``(mode, library)`` of ``runs`` fitted in a child process of its own on one corpus (saved in
    ``folder``), keyed ``f"{prefix}{mode}-{library}"``."""
    shared, rows = shared_corpus(args, folder), {}
    for mode, library in runs:
        print(f"{prefix}{mode}: {library}", flush=True)
        rows[f"{prefix}{mode}-{library}"] = spawn(__file__, ["--child", library, "--mode", mode] + shared,
                                                  args.child_timeout)
    return rows


def training(args):
    """(train, held-out, L) for the mode: online, the training documents cut to whole minibatches (one pass of
    them, N the same for every library)."""
    train, heldout, length = corpus(args)
    if args.mode == "online":
        train = train[:(train.shape[0] // args.batch) * args.batch]
    return train, heldout, length


def start_topics(args, vocabulary: int) -> np.ndarray:
    return np.random.default_rng(1).gamma(100.0, 0.01, (args.topics, vocabulary))


def perplexity(args, topics: np.ndarray, heldout, length: int) -> float:
    """scikit-learn's held-out perplexity at the topics' concentrations (jaxvi's function, float64)."""
    import jax
    import jax.numpy as jnp

    import jaxvi

    with jax.enable_x64(True):
        docs = jaxvi.models.bag_of_words(heldout, np.float64, length=length)
        model = jaxvi.models.lda(docs, args.topics, topics.shape[1])
        factors = ((jnp.asarray(topics - 1.0),),)
        bound = jaxvi.CAVI().bound(model, {}, factors, tuple(jnp.asarray(a) for a in docs))
        return float(jnp.exp(-bound / heldout.sum()))


# --- jaxvi ------------------------------------------------------------------------------------------

def fit_jaxvi(args) -> dict:
    import jax
    import jax.numpy as jnp

    import jaxvi

    train, heldout, length = training(args)
    docs = jaxvi.models.bag_of_words(train, np.float32, length=length)
    data = tuple(jnp.asarray(a) for a in docs)
    n, vocabulary = train.shape
    model = jaxvi.models.lda(docs, args.topics, vocabulary)
    start = jnp.asarray(start_topics(args, vocabulary) - 1.0, jnp.float32)
    online = args.mode == "online"
    method = jaxvi.CAVI(batch_size=args.batch, step_size=(TAU0, KAPPA)) if online else jaxvi.CAVI()
    steps = n // args.batch if online else args.iters
    key = jax.random.key(0)

    def fit(start, data):  # the data an argument, as infer passes them (closed over: compiled in as constants)
        state = method.init(model, key, data)  # then the shared start: the topics, every document from gamma = 1
        state = state._replace(factors=((start,),), local=jax.tree_util.tree_map(jnp.zeros_like, state.local))

        def body(state, first):
            if online:
                batch = jax.tree_util.tree_map(lambda a: jax.lax.dynamic_slice_in_dim(a, first, args.batch), data)
            else:  # every E-step from gamma = 1, as scikit-learn's (jaxvi's own fit carries gamma instead)
                batch, state = data, state._replace(local=jax.tree_util.tree_map(jnp.zeros_like, state.local))
            state, info = method.step(model, key, state, batch, num_data=n)
            return state, info.objective

        firsts = jnp.arange(steps) * args.batch
        state, bounds = jax.lax.scan(body, state, firsts)
        return state.factors[0][0], bounds

    t0 = time.perf_counter()
    options = jaxvi.compiler_options(model=model, method=method)  # as infer compiles this fit
    compiled = jax.jit(fit, compiler_options=options).lower(start, data).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    topics, bounds = jax.block_until_ready(compiled(start, data))
    run = time.perf_counter() - t0
    topics = np.asarray(topics, np.float64) + 1.0
    return {"total_s": compile_s + run, "run_s": run, "compile_s": compile_s, "steps": steps,
            "perplexity": perplexity(args, topics, heldout, length), "topics_checksum": float(topics.sum())}


# --- scikit-learn -----------------------------------------------------------------------------------

def fit_sklearn(args) -> dict:
    from sklearn.decomposition import LatentDirichletAllocation
    from sklearn.decomposition._online_lda_fast import _dirichlet_expectation_2d

    train, heldout, length = training(args)
    n, vocabulary = train.shape
    online = args.mode == "online"
    peer = LatentDirichletAllocation(args.topics, learning_method="online" if online else "batch",
                                     learning_offset=TAU0, learning_decay=KAPPA, n_jobs=os.cpu_count())
    t0 = time.perf_counter()
    peer._init_latent_vars(vocabulary, np.float64)
    peer.random_state_ = None  # every document from gamma = 1
    peer.components_ = start_topics(args, vocabulary)
    peer.exp_dirichlet_component_ = np.exp(_dirichlet_expectation_2d(peer.components_))
    from joblib import Parallel

    with Parallel(n_jobs=os.cpu_count()) as parallel:
        if online:
            for first in range(0, n, args.batch):
                peer._em_step(train[first:first + args.batch], total_samples=n, batch_update=False,
                              parallel=parallel)
        else:
            for _ in range(args.iters):
                peer._em_step(train, total_samples=n, batch_update=True, parallel=parallel)
    total = time.perf_counter() - t0
    return {"total_s": total, "perplexity": perplexity(args, peer.components_, heldout, length),
            "topics_checksum": float(peer.components_.sum())}


# --- gensim -----------------------------------------------------------------------------------------

class GammaOfOnes(np.random.RandomState):
    """A random state whose Gamma draws are ones (gensim draws every document's start of gamma from it)."""

    def gamma(self, shape, scale=1.0, size=None):
        return np.ones(size)


def fit_gensim(args) -> dict:
    from gensim.models import LdaModel

    train, heldout, length = training(args)
    n, vocabulary = train.shape
    bows = [list(zip(train.indices[a:b].tolist(), train.data[a:b].tolist()))
            for a, b in zip(train.indptr[:-1], train.indptr[1:])]
    t0 = time.perf_counter()
    peer = LdaModel(num_topics=args.topics, id2word={i: str(i) for i in range(vocabulary)}, alpha="symmetric",
                    eta="symmetric", decay=KAPPA, offset=TAU0 + 1, iterations=100, gamma_threshold=1e-3,
                    chunksize=args.batch, passes=1, update_every=1, eval_every=None, dtype=np.float64)
    peer.random_state = GammaOfOnes()  # every document from gamma = 1
    peer.state.sstats[...] = start_topics(args, vocabulary) - peer.eta
    peer.sync_state()
    peer.update(bows)
    total = time.perf_counter() - t0
    topics = peer.state.get_lambda()
    return {"total_s": total, "perplexity": perplexity(args, topics, heldout, length),
            "topics_checksum": float(topics.sum())}


TASKS = {"jaxvi": fit_jaxvi, "sklearn": fit_sklearn, "gensim": fit_gensim}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", choices=("lee", "synthetic"), default="lee")
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--vocabulary", type=int, default=10_000)
    parser.add_argument("--topics", type=int, default=None)
    parser.add_argument("--words", type=int, default=100)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--mode", choices=("batch", "online"), default="batch")  # a child's mode
    parser.add_argument("--scaling", default=None, help="numbers of training documents, comma-separated")
    parser.add_argument("--plot", default=None, help="with --scaling: where to draw time against N (PNG)")
    parser.add_argument("--corpus-file", default=None, help=argparse.SUPPRESS)  # a child's saved synthetic corpus
    args = parse(parser, QUICK, TASKS)
    args.topics = args.topics or (10 if args.corpus == "lee" else 50)
    args.batch = args.batch or (32 if args.corpus == "lee" else 2048)
    if args.child:
        run_child(TASKS[args.child], args)
        return
    if args.scaling:
        scaling(args)
        return
    import jax

    runs = [("batch", "jaxvi"), ("batch", "sklearn"), ("online", "jaxvi"), ("online", "sklearn"),
            ("online", "gensim")]
    with tempfile.TemporaryDirectory() as folder:
        rows = spawn_runs(args, runs, folder)
        train, _, length = corpus(args)
    where = machine(jax)
    versions = {name: importlib.metadata.version(name) for name in ("jax", "jaxlib", "scikit-learn", "gensim")}
    size = (f"{train.shape[0]} training documents, V={train.shape[1]}, {int(train.sum())} tokens, L={length}"
            f" distinct words at most")
    lines = [f"# LDA ({args.corpus}): {size}, K={args.topics}; batch {args.iters} iterations, online one pass of "
             f"minibatches of {args.batch}", f"machine: {where}; " + ", ".join(f"{k} {v}" for k, v in versions.items()),
             "", "| mode | library | compile s | run s | total s | held-out perplexity | peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    for (mode, library) in runs:
        r = rows[f"{mode}-{library}"]
        if "error" in r:
            lines.append(f"| {mode} | {library} | {r['error']} | | | | |")
            continue
        lines.append(f"| {mode} | {library} | {r.get('compile_s', 0):.2f} | {r.get('run_s', r['total_s']):.2f} | "
                     f"{r['total_s']:.2f} | {r['perplexity']:.2f} | {r['peak_rss_mb']:.0f} |")
    lines.append("")
    summary = {}
    for mode, peer, target in (("batch", "sklearn", TARGET_BATCH), ("online", "sklearn", None),
                               ("online", "gensim", TARGET_ONLINE)):
        j, p = rows[f"{mode}-jaxvi"], rows[f"{mode}-{peer}"]
        if "error" in j or "error" in p:
            continue
        ratio = p["total_s"] / j["total_s"]
        same = abs(j["perplexity"] - p["perplexity"]) / p["perplexity"]
        summary[f"{mode}-{peer}"] = {"speedup_with_compile": ratio, "speedup_compiled": p["total_s"] / j["run_s"],
                                     "perplexity_rel_diff": same, "target": target}
        verdict = "" if target is None else (" (meets" if ratio >= target and same <= 0.01 else " (MISSES") + \
            f" the {target:g}x target at equal perplexity)"
        lines.append(f"{mode}, against {peer}: {ratio:.2f}x including compile{verdict}, "
                     f"{p['total_s'] / j['run_s']:.2f}x compiled; held-out perplexities differ by {100 * same:.2f}%")
    write(args, "\n".join(lines), {"machine": where, "versions": versions, "corpus": args.corpus, "size": size,
                                   "topics": args.topics, "summary": summary}, rows)


SCALING_RUNS = (("batch", "jaxvi"), ("batch", "sklearn"), ("online", "jaxvi"), ("online", "gensim"))


def scaling(args) -> None:
    """Every library's total time (compile included) at each number of training documents of ``--scaling``."""
    import jax

    sizes = [int(n) for n in args.scaling.split(",")]
    rows = {}
    for n in sizes:
        args.corpus, args.docs, args.corpus_file = "synthetic", n, None
        with tempfile.TemporaryDirectory() as folder:
            rows.update(spawn_runs(args, SCALING_RUNS, folder, prefix=f"{n}-"))
    where = machine(jax)
    lines = [f"# LDA (synthetic) time against the number of documents: V={args.vocabulary}, K={args.topics}, about "
             f"{args.words} tokens per document; batch {args.iters} iterations, online one pass of minibatches of "
             f"{args.batch}", f"machine: {where}", "",
             "| N | " + " | ".join(f"{mode} {library} total s (compile s)" for mode, library in SCALING_RUNS) + " |",
             "|---|" + "---|" * len(SCALING_RUNS)]
    for n in sizes:
        cells = []
        for mode, library in SCALING_RUNS:
            r = rows[f"{n}-{mode}-{library}"]
            cells.append(r["error"] if "error" in r else f"{r['total_s']:.2f} ({r.get('compile_s', 0.0):.2f})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines.append("")
    for mode, peer in (("batch", "sklearn"), ("online", "gensim")):
        ratios = [rows[f"{n}-{mode}-{peer}"]["total_s"] / rows[f"{n}-{mode}-jaxvi"]["total_s"] for n in sizes
                  if "error" not in rows[f"{n}-{mode}-{peer}"] and "error" not in rows[f"{n}-{mode}-jaxvi"]]
        lines.append(f"{mode}, {peer} time / jaxvi time including compile, by N: "
                     + ", ".join(f"{r:.2f}x" for r in ratios))
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for mode, library in SCALING_RUNS:
            points = [(n, rows[f"{n}-{mode}-{library}"]["total_s"]) for n in sizes
                      if "error" not in rows[f"{n}-{mode}-{library}"]]
            ax.plot(*zip(*points), marker="o", linestyle="-" if library == "jaxvi" else "--",
                    label=f"{mode}: {library}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training documents N")
        ax.set_ylabel("seconds, compile included")
        ax.set_title(f"LDA, K={args.topics}, V={args.vocabulary} ({where})", fontsize=8)
        ax.legend(fontsize=8)
        fig.savefig(args.plot, dpi=120, bbox_inches="tight")
    write(args, "\n".join(lines), {"machine": where, "sizes": sizes, "topics": args.topics,
                                    "vocabulary": args.vocabulary, "iters": args.iters, "batch": args.batch}, rows)


if __name__ == "__main__":
    main()
