"""Seconds per epoch of the fused engine against the ways seed 000 would train the same ensemble.

Workload (seed 000): 10,000 rows x 30 features, binary target, N in {5, 50} MLPs with two tanh hidden layers of
H in {10, 100} units, batch size 1, Adam, one epoch. Compared:

    (a) fused engine: `ensemble.training.train.fit` on a `FusedMLP`, default `jit_compile="auto"` (XLA), and (a') the same
        as a plain TensorFlow graph (`jit_compile=False`); tracing / XLA compilation timed separately, on a warm-up
        call;
    (b) N separate `keras.Sequential.fit(batch_size=1)`, timed on a few members and rows, scaled;
    (c) the seed's multi-branch Keras model (N branches -> `Average`), `fit(batch_size=1)`, timed on a subset, scaled;
    (d) `torch.func.vmap` over `functional_call` with Adam on the stacked parameters (skipped without torch);
    (e) JAX: `jax.vmap` over the members, optax Adam, `lax.scan` over the epoch's steps, one `jax.jit` call per
        epoch (compilation timed separately; skipped without jax/optax: `pip install -e '.[bench]'`).

Then the fused per-step cost for N in {1, 10, 50, 200, 1000} (H = 10 and 100, with the Adam update alone for
comparison) and, with `--profile`, where a step's time goes. It prints; nothing is written. Other processes on the
machine change the numbers: the load is printed. `--threads 1` pins TF (and torch) to one thread, which is faster
on a busy machine: TF's Adam kernel always splits its work over all threads and then waits for the slowest.

    .venv/bin/python benchmarks/bench_fused.py                       # everything (~15 min on 2 cores)
    .venv/bin/python benchmarks/bench_fused.py --quick --threads 1   # smaller timing samples (~5 min)
    .venv/bin/python benchmarks/bench_fused.py --engines --quick --threads 1      # (a), (a'), (e), (b) (~6 min)
    .venv/bin/python benchmarks/bench_fused.py --profile-xla --quick --threads 1  # a step: graph vs XLA (~1.5 min)
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ensemble.model.fused import FusedMLP  # noqa: E402
from ensemble.optim.optimizers import apply_gradients  # noqa: E402
from ensemble.training.train import TrainConfig, compiled_steps, epoch_indices, fit, member_losses  # noqa: E402

ROWS, FEATURES, LR = 10_000, 30, 1e-3
STEPS_PER_CALL = 1000


def make_data(rows: int = ROWS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features `(rows, 30)` and a binary target from a random tanh teacher."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES)).astype("float32")
    teacher = np.tanh(x @ rng.normal(size=(FEATURES, 8))) @ rng.normal(size=8)
    return x, (teacher > np.median(teacher)).astype("int64")


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_of(fn, repeats: int = 2) -> float:
    """The fastest of `repeats` timings: other processes only ever add time."""
    return min(timed(fn) for _ in range(repeats))


# --- (a) the fused engine ------------------------------------------------------------------------------------------


def fused_epoch(members: int, hidden: int, x, y, jit_compile: bool | str = "auto") -> tuple[float, float]:
    """(seconds for one epoch of `fit`, tracing (+ XLA compile) seconds). A warm-up call with the epoch's shapes
    traces (and compiles) first."""
    model = FusedMLP(members, FEATURES, (hidden, hidden), task="binary", activation="tanh", seed=0)
    optimizer = keras.optimizers.Adam(LR)
    optimizer.build(model.trainable_variables)
    config = TrainConfig(
        epochs=1, steps_per_call=STEPS_PER_CALL, train_metrics=False, jit_compile=jit_compile
    )
    run_steps = compiled_steps(model, optimizer, config)
    warm = epoch_indices(len(x), members, 1, epoch=99, seed=0, bagging=False)[:STEPS_PER_CALL]
    x_t, y_t = tf.constant(x), tf.constant(y.astype("int32"))
    warm_call = lambda: run_steps(x_t, y_t, tf.constant(warm), len(warm))[0].numpy()  # noqa: E731
    first = timed(warm_call)  # tracing (+ XLA compilation) + 1000 steps
    second = timed(warm_call)  # 1000 steps
    epoch = best_of(lambda: fit(model, x, y, optimizer=optimizer, config=config))
    if jit_compile == "auto" and not run_steps.uses_xla:
        print(f"- (a) N={members} H={hidden}: XLA fell back to the plain graph: {run_steps.fallback_reason}")
    return epoch, max(first - second, 0.0)


def fused_step_seconds(
    members: int, hidden: int, x, y, steps: int, jit_compile: bool | str = "auto", chunk: int = STEPS_PER_CALL
) -> float:
    """Seconds per optimiser step of the compiled loop (Adam, batch 1), after a warm-up call of the same shape."""
    model = FusedMLP(members, FEATURES, (hidden, hidden), task="binary", activation="tanh", seed=0)
    optimizer = keras.optimizers.Adam(LR)
    optimizer.build(model.trainable_variables)
    chunk = min(steps, chunk)
    run_steps = compiled_steps(model, optimizer, TrainConfig(steps_per_call=chunk, jit_compile=jit_compile))
    indices = epoch_indices(len(x), members, 1, epoch=0, seed=0, bagging=False)[:chunk]
    x_t, y_t, i_t = tf.constant(x), tf.constant(y.astype("int32")), tf.constant(indices)
    run_steps(x_t, y_t, i_t, chunk)[0].numpy()
    calls = max(1, steps // chunk)
    return best_of(lambda: run_steps(x_t, y_t, i_t, chunk)[0].numpy(), max(2, calls)) / chunk


# --- (b) separate Keras models, (c) the seed's Average model -------------------------------------------------------


def keras_epoch_estimate(build, x, y, rows_timed: int, warm_rows: int = 100) -> tuple[float, float, float]:
    """Time `fit(batch_size=1)` of one fresh model: (seconds per step, per-model overhead, scaled epoch seconds).

    A first `fit` on `warm_rows` rows pays tracing; a second on `rows_timed` rows gives the per-step cost.
    """
    model = build()
    model.compile(optimizer=keras.optimizers.Adam(LR), loss="binary_crossentropy", jit_compile=False)
    first = timed(lambda: model.fit(x[:warm_rows], y[:warm_rows], batch_size=1, shuffle=False, verbose=0))
    half = rows_timed // 2
    per_step = best_of(lambda: model.fit(x[:half], y[:half], batch_size=1, verbose=0)) / half
    overhead = max(first - warm_rows * per_step, 0.0)
    return per_step, overhead, overhead + len(x) * per_step


def sequential_member(hidden: int) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input(shape=(FEATURES,)),
            keras.layers.Dense(hidden, activation="tanh"),
            keras.layers.Dense(hidden, activation="tanh"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )


def seed_average_model(hidden: int, members: int) -> keras.Model:
    """Seed 000's `bagging_ensemble`, with the workload's two hidden layers per branch: N branches -> Average."""
    inputs = keras.Input(shape=(FEATURES,))
    branches = []
    for _ in range(members):
        h = keras.layers.Dense(hidden, activation="tanh")(inputs)
        h = keras.layers.Dense(hidden, activation="tanh")(h)
        branches.append(keras.layers.Dense(1, activation="sigmoid")(h))
    return keras.Model(inputs, keras.layers.Average()(branches))


# --- (d) torch.func.vmap ---------------------------------------------------------------------------------------------


def torch_epoch_estimate(members: int, hidden: int, x, y, steps: int) -> tuple[float, str] | None:
    """Seconds per epoch of vmapped members with Adam on the stacked parameters (timed on `steps`, scaled)."""
    try:
        import torch
        from torch.func import functional_call, stack_module_state, vmap
    except ImportError:
        return None
    torch.manual_seed(0)

    def member():
        return torch.nn.Sequential(
            torch.nn.Linear(FEATURES, hidden),
            torch.nn.Tanh(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.Tanh(),
            torch.nn.Linear(hidden, 1),
        )

    params, buffers = stack_module_state([member() for _ in range(members)])  # each (N, ...)
    base = member().to("meta")
    forward = vmap(lambda p, b, xb: functional_call(base, (p, b), (xb,)))  # (N, B, d) -> (N, B, 1)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y.astype("float32"))
    indices = torch.from_numpy(
        epoch_indices(len(x), members, 1, 0, 0, False).astype("int64")
    )  # (steps, N, 1)

    best = None
    for variant in ("fused", "foreach", "for-loop"):
        try:
            kwargs = {"fused": True} if variant == "fused" else {"foreach": variant == "foreach"}
            optimizer = torch.optim.Adam(list(params.values()), lr=LR, **kwargs)

            def run(n_steps, optimizer=optimizer):
                for s in range(n_steps):
                    rows = indices[s % len(indices)]  # (N, 1)
                    logits = forward(params, buffers, x_t[rows])[..., 0]  # (N, 1)
                    losses = torch.nn.functional.binary_cross_entropy_with_logits(
                        logits, y_t[rows], reduction="none"
                    ).mean(1)  # (N,)
                    optimizer.zero_grad(set_to_none=True)
                    losses.sum().backward()
                    optimizer.step()

            run(50)  # warm-up
            per_step = best_of(lambda run=run: run(steps // 2)) / (steps // 2)
        except (RuntimeError, TypeError):
            continue
        if best is None or per_step < best[0]:
            best = (per_step, variant)
    return best[0] * len(x), f"torch {torch.__version__}, Adam {best[1]}, {torch.get_num_threads()} threads"


# --- (e) JAX: vmap + optax Adam + lax.scan -------------------------------------------------------------------------


def jax_epoch(members: int, hidden: int, x, y) -> tuple[float, float, str] | None:
    """(seconds per epoch, compile seconds, versions) of vmapped members trained by one jitted `lax.scan` per epoch.

    Same workload as (a): per-member shuffles (`epoch_indices`), batch 1, Adam (Keras' epsilon 1e-7) on the stacked
    parameters (elementwise, so members stay independent), summed member losses. None without jax/optax.
    """
    try:
        import jax
        import jax.numpy as jnp
        import optax
    except ImportError:
        return None

    def init_member(key):
        """Glorot-uniform kernels and zero biases of one member: [(w (d, H), b (H,)), ..., (w (H, 1), b (1,))]."""
        sizes, params = (FEATURES, hidden, hidden, 1), []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            key, sub = jax.random.split(key)
            limit = float(np.sqrt(6.0 / (fan_in + fan_out)))
            params.append(
                (jax.random.uniform(sub, (fan_in, fan_out), minval=-limit, maxval=limit), jnp.zeros(fan_out))
            )
        return params

    def member_loss(params, xb, yb):  # xb (B, d), yb (B,)
        h = xb
        for w, b in params[:-1]:
            h = jnp.tanh(h @ w + b)  # (B, H)
        w, b = params[-1]
        return optax.sigmoid_binary_cross_entropy((h @ w + b)[:, 0], yb).mean()

    def total_loss(params, xb, yb):  # (N, B, d), (N, B): sum, so each member gets exactly its own gradient
        return jax.vmap(member_loss)(params, xb, yb).sum()

    optimizer = optax.adam(LR, eps=1e-7)

    @jax.jit
    def run_epoch(params, opt_state, x_all, y_all, batch_indices):  # (rows, d), (rows,), (S, N, B)
        def step(carry, rows):  # rows (N, B)
            params, opt_state = carry
            loss, grads = jax.value_and_grad(total_loss)(params, x_all[rows], y_all[rows])
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), batch_indices)
        return params, opt_state, losses

    params = jax.vmap(init_member)(jax.random.split(jax.random.PRNGKey(0), members))  # each leaf (N, ...)
    opt_state = optimizer.init(params)
    x_j, y_j = jnp.asarray(x), jnp.asarray(y.astype("float32"))
    indices = [jnp.asarray(epoch_indices(len(x), members, 1, epoch, 0, False)) for epoch in range(3)]

    def one_epoch(epoch: int) -> None:
        nonlocal params, opt_state
        params, opt_state, losses = run_epoch(params, opt_state, x_j, y_j, indices[epoch])
        losses.block_until_ready()

    first = timed(lambda: one_epoch(0))  # compile + 1 epoch
    epoch = min(timed(lambda e=e: one_epoch(e)) for e in (1, 2))
    return epoch, max(first - epoch, 0.0), f"jax {jax.__version__}, optax {optax.__version__}"


# --- where a fused step's time goes ------------------------------------------------------------------------------


def profile_step(members: int, hidden: int, x, y, steps: int, jit_compile: bool = False) -> dict[str, float]:
    """Seconds per step of stripped-down variants of the compiled loop (same model, batch 1), as plain graphs or
    XLA-compiled."""
    model = FusedMLP(members, FEATURES, (hidden, hidden), task="binary", activation="tanh", seed=0)
    variables = model.trainable_variables
    x_t, y_t = tf.constant(x), tf.constant(y.astype("int32"))
    indices = tf.constant(epoch_indices(len(x), members, 1, 0, 0, False)[:STEPS_PER_CALL])

    def loop(body):
        """A compiled loop of `body(xb, yb) -> scalar`; the scalars are summed so no work is pruned."""

        @tf.function(jit_compile=jit_compile)
        def run(batch_indices):
            sink = tf.constant(0.0)
            for s in tf.range(tf.shape(batch_indices)[0]):
                rows = batch_indices[s]  # (N, 1)
                sink += body(tf.gather(x_t, rows), tf.gather(y_t, rows))  # (N, 1, d), (N, 1)
            return sink

        return run

    def loss(xb, yb):
        return tf.reduce_sum(member_losses("binary", yb, model(xb, training=True)))

    def grads(xb, yb):
        with tf.GradientTape() as tape:
            total = loss(xb, yb)
        return tape.gradient(total, variables)

    def first_entries(tensors) -> tf.Tensor:
        """A scalar that depends on every tensor but reads one entry of each (keeps them computed)."""
        return tf.add_n([tf.reshape(t, [-1])[0] for t in tensors])

    def with_optimizer(make, fused: bool):
        optimizer = make()
        optimizer.build(variables)
        update = apply_gradients if fused else lambda opt, g, v: opt.apply(g, v)

        def step(xb, yb):
            update(optimizer, grads(xb, yb), variables)
            return tf.constant(0.0)

        return step

    variants = {
        "gather only": lambda xb, yb: tf.reduce_sum(xb) + tf.cast(tf.reduce_sum(yb), tf.float32),
        "forward": loss,
        "forward + backward": lambda xb, yb: first_entries(grads(xb, yb)),
        "+ SGD (fused kernel)": with_optimizer(lambda: keras.optimizers.SGD(LR), True),
        "+ Adam (fused kernel) = engine": with_optimizer(lambda: keras.optimizers.Adam(LR), True),
        "+ Adam (Keras optimizer.apply)": with_optimizer(lambda: keras.optimizers.Adam(LR), False),
    }
    result = {}
    calls = max(1, steps // STEPS_PER_CALL)
    for name, body in variants.items():
        run = loop(body)
        run(indices)
        result[name] = best_of(lambda run=run: run(indices).numpy(), max(2, calls)) / STEPS_PER_CALL
    return result


def adam_update_seconds(members: int, hidden: int, steps: int = 200) -> float:
    """Seconds of the Adam update alone (`apply_gradients`, fused kernels) on the model's variables, per step."""
    model = FusedMLP(members, FEATURES, (hidden, hidden), task="binary", seed=0)
    variables = model.trainable_variables
    grads = [tf.fill(v.shape, 1e-3) for v in variables]
    optimizer = keras.optimizers.Adam(LR)
    optimizer.build(variables)

    @tf.function
    def run():
        for _ in tf.range(steps):
            apply_gradients(optimizer, grads, variables)
        return optimizer.iterations

    run()
    return best_of(lambda: run().numpy(), 3) / steps


# --- report --------------------------------------------------------------------------------------------------------

ENGINE_SIZES = ((5, 10), (50, 10), (50, 100))  # (N, H)


def profile_xla(x, y, steps: int, members: int = 50, hidden: int = 10) -> None:
    """Where a step goes as a plain graph and under XLA, and the engine's own loop at several `steps_per_call`."""
    print(f"## Where a step goes: N={members}, H={hidden} (ms/step)\n")
    print("| variant | plain graph | XLA |")
    print("|---|---|---|")
    plain, xla = (profile_step(members, hidden, x, y, steps, jit) for jit in (False, True))
    for name in plain:
        print(f"| {name} | {1e3 * plain[name]:.3f} | {1e3 * xla[name]:.3f} |", flush=True)
    for chunk in (100, 1000, 10_000):
        cells = [fused_step_seconds(members, hidden, x, y, chunk, jit, chunk) for jit in (False, True)]
        print(
            f"| engine `compiled_steps` (+ LR record, loss sum), steps_per_call={chunk} "
            f"| {1e3 * cells[0]:.3f} | {1e3 * cells[1]:.3f} |",
            flush=True,
        )


def engines_table(x, y, seq_rows: int) -> None:
    """Seconds per epoch of the fused engine with XLA (default "auto") and as a plain graph, JAX, N x Sequential."""
    print(
        "| N | H | (a) fused, XLA (auto) s/epoch | XLA compile s | (a') fused, plain graph s/epoch | tracing s "
        "| (e) JAX s/epoch | JAX compile s | (b) N x Sequential s/epoch | (a')/(a) | (e)/(a) | (b)/(a) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    member_epochs: dict[int, float] = {}
    versions = None
    for members, hidden in ENGINE_SIZES:
        xla, compile_s = fused_epoch(members, hidden, x, y, "auto")
        plain, tracing = fused_epoch(members, hidden, x, y, False)
        jax_result = jax_epoch(members, hidden, x, y)
        if hidden not in member_epochs:
            build = functools.partial(sequential_member, hidden)
            member_epochs[hidden] = keras_epoch_estimate(build, x, y, seq_rows)[2]
        seq = members * member_epochs[hidden]
        if jax_result is None:
            jax_cells = "skipped | - "
        else:
            jax_cells, versions = f"{jax_result[0]:.2f} | {jax_result[1]:.1f} ", jax_result[2]
        jax_ratio = f"{jax_result[0] / xla:.2f}" if jax_result else "-"
        print(
            f"| {members} | {hidden} | {xla:.2f} | {compile_s:.1f} | {plain:.2f} | {tracing:.1f} | {jax_cells}"
            f"| {seq:.0f} | {plain / xla:.2f} | {jax_ratio} | {seq / xla:.0f} |",
            flush=True,
        )
    print(
        f"\n- (b): 1 member timed on 2 fits of {seq_rows // 2} rows (best) per H, scaled to {ROWS} rows, x N"
    )
    print(
        f"- (e): {versions}"
        if versions
        else "- (e) skipped: jax/optax not importable (pip install -e '.[bench]')"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller timing samples")
    parser.add_argument("--profile", action="store_true", help="also break a step down (N=50 and 200, H=100)")
    parser.add_argument(
        "--profile-xla", action="store_true", help="only break a step down, plain graph vs XLA (N=50, H=10)"
    )
    parser.add_argument(
        "--engines", action="store_true", help="only (a) XLA, (a') plain graph, (e) JAX and (b) at 3 sizes"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="TF intra/inter-op and torch threads (0: the libraries' defaults)",
    )
    args = parser.parse_args()
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
        try:
            import torch

            torch.set_num_threads(args.threads)
        except ImportError:
            pass
        if args.threads == 1:  # JAX's CPU backend (imported later): no Eigen thread pool either
            os.environ["XLA_FLAGS"] = (
                f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen=false".strip()
            )
    seq_rows, avg_rows, torch_steps, scale_steps = (
        (500, 200, 300, 1000) if args.quick else (2000, 1000, 2000, 2000)
    )
    x, y = make_data()

    print(f"# Fused ensemble benchmark ({platform.processor() or platform.machine()}, TF {tf.__version__})")
    print(
        f"workload: {ROWS} rows x {FEATURES} features, binary, two tanh hidden layers, batch 1, Adam, 1 epoch"
    )
    threads = (
        args.threads or f"default ({tf.config.threading.get_intra_op_parallelism_threads()} = all cores)"
    )
    print(f"threads: {threads}; start: {load()}\n")
    if args.profile_xla:
        profile_xla(x, y, scale_steps)
        print(f"\nend: {load()}")
        return
    if args.engines:
        engines_table(x, y, seq_rows)
        print(f"\nend: {load()}")
        return
    print(
        "| N | H | (a) fused s/epoch | tracing s | (b) N x Sequential s/epoch | (c) seed Average s/epoch "
        "| (d) torch vmap s/epoch | (b)/(a) | (c)/(a) | (d)/(a) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    notes = []
    for hidden in (10, 100):
        per_member = [
            keras_epoch_estimate(functools.partial(sequential_member, hidden), x, y, seq_rows)
            for _ in range(2)
        ]
        member_epoch = float(np.mean([estimate[2] for estimate in per_member]))
        notes.append(
            f"(b) H={hidden}: 2 members, each timed on 2 fits of {seq_rows // 2} rows (best): {1e3 * np.mean([e[0] for e in per_member]):.2f} "
            f"ms/step + {np.mean([e[1] for e in per_member]):.2f} s per-model overhead -> "
            f"{member_epoch:.1f} s per member-epoch, x N"
        )
        for members in (5, 50):
            fused, tracing = fused_epoch(members, hidden, x, y)
            seq = members * member_epoch
            avg_step, avg_overhead, avg = keras_epoch_estimate(
                functools.partial(seed_average_model, hidden, members), x, y, avg_rows
            )
            notes.append(
                f"(c) N={members} H={hidden}: timed on 2 fits of {avg_rows // 2} rows (best): {1e3 * avg_step:.2f} ms/step, "
                f"{avg_overhead:.1f} s tracing (counted once), scaled to {ROWS} rows"
            )
            vmap = torch_epoch_estimate(members, hidden, x, y, torch_steps)
            if vmap is not None:
                notes.append(
                    f"(d) N={members} H={hidden}: timed on 2 x {torch_steps // 2} steps (best), scaled; {vmap[1]}"
                )
            vmap_s = f"{vmap[0]:.1f}" if vmap else "skipped"
            vmap_ratio = f"{vmap[0] / fused:.1f}x" if vmap else "-"
            print(
                f"| {members} | {hidden} | {fused:.1f} | {tracing:.1f} | {seq:.0f} | {avg:.0f} | {vmap_s} "
                f"| {seq / fused:.0f}x | {avg / fused:.0f}x | {vmap_ratio} |",
                flush=True,
            )
    print()
    for note in notes:
        print(f"- {note}")
    try:
        import torch  # noqa: F401
    except ImportError:
        print("- (d) skipped: torch is not importable (pip install torch to include it)")

    print(
        f"\n## Fused per-step cost, Adam, batch 1 ({scale_steps} steps after a warm-up call; N=1000: 200)\n"
    )
    print("| N | H=10 ms/step | vs N=1 | H=100 ms/step | vs N=1 | H=100: Adam update alone ms |")
    print("|---|---|---|---|---|---|")
    base: dict[int, float] = {}
    for members in (1, 10, 50, 200, 1000):
        cells = []
        for hidden in (10, 100):
            step = fused_step_seconds(members, hidden, x, y, scale_steps if members < 1000 else 200)
            base.setdefault(hidden, step)
            cells.append(f"{1e3 * step:.3f} | {step / base[hidden]:.1f}x")
        adam = adam_update_seconds(members, 100)
        print(f"| {members} | {' | '.join(cells)} | {1e3 * adam:.3f} |", flush=True)

    if args.profile:
        for members in (50, 200):
            print(f"\n## Where a step goes: N={members}, H=100 (ms/step)\n")
            print("| variant | ms/step |")
            print("|---|---|")
            for name, seconds in profile_step(members, 100, x, y, scale_steps).items():
                print(f"| {name} | {1e3 * seconds:.3f} |", flush=True)
    print(f"\nend: {load()}")


if __name__ == "__main__":
    main()
