"""Training settings and the named presets ``fast`` (our default) and ``paper`` (the stock PyG recipe).

``paper`` reproduces what the LightGCN paper and PyG's example do: BPR with
one uniformly sampled negative per positive, Adam lr 1e-3, 2048 pairs per
batch, L2 1e-4 on the ego embeddings, 64 dimensions, 3 layers, and PyG's
``LightGCN`` re-normalising an edge index on every batch. It exists so the
speed benchmark can measure our recipe against it in one run.

``fast`` is our default: a full-softmax loss over all items (BPR stays
available with ``loss="bpr"``) on the *cosine* of the final user and item
embeddings at temperature 0.15, for batches of 1024 users on the propagation
operator built once; after early stopping (10 evaluations without gain) the
model is retrained on all of train (fit + valid), as every tuned peer in
``benchmarks/accuracy.py`` is, up to the last epoch of the validation plateau
(``movierec.trainer.train.plateau_end``: with the best epoch itself, training
seed 1 refitted 28 epochs and lost 0.007 test NDCG@20 to the same recipe
refitted 40). Speed against the stock recipe:
benchmarks/results/train_speed.md.

How the settings were chosen (ML-1M, standard split, seed 42; full softmax, 3
layers, 256-d, batch 1024 users unless noted; one torch thread, two runs at a
time on the shared 2-core machine; "valid" = best validation Recall@20, which
made every choice; test = Recall/NDCG@20 with vectors propagated over the whole
train graph — over the fit graph for the first five rows — shown for the
record). First sweep, dot-product scores:

====  ====  ====  =====  ==================  ==========  ==============  ==============
dim   lr    L2    best   note                valid R@20  test R@20       test NDCG@20
====  ====  ====  =====  ==================  ==========  ==============  ==============
64    1e-2  0     ep 40                      0.2547      0.2711          0.2911
64    1e-2  3e-3  ep 40                      0.2585      0.2747          0.2965
64    1e-2  3e-2  ep 65                      0.2727      0.2869          0.3128
64    3e-2  1e-1  ep 75  too much L2         0.2409      0.2525          0.2909
128   3e-2  3e-2  ep 25                      0.2743      0.2868          0.3104
128   3e-2  3e-2  ep 10  τ 0.1: overfits     0.2570      0.2748          0.2964
128   3e-2  3e-2  ep 35  2048 users/batch    0.2718      0.2879          0.3134
256   5e-2  5e-2  ep 18                      0.2775      0.2896          0.3145
256   3e-2  5e-2  ep 24  τ 0.25 (time cut)   0.2709      0.2825          0.3131
256   3e-2  8e-2  ep 24  time cut at 360 s   0.2550      0.2656          0.3029
384   3e-2  5e-2  ep 15  time cut, 24 s/ep   0.2652      0.2761          0.3118
256   3e-2  5e-2  ep 25  τ 0.2: old default  0.2784      0.2907          0.3188
====  ====  ====  =====  ==================  ==========  ==============  ==============

Second sweep, from the old default (dot, τ 0.2, L2 5e-2, lr 3e-2). Neither
dropping 30 % of the graph's edges per step (targets: all positives, or only
the dropped ones, as a denoising objective) nor anything else on dot products
moved validation; cosine scores did, and so did the refit:

=======  ====  ====  =====  =================================  ==========  =========  ============
score    τ     L2    best   note                               valid R@20  test R@20  test NDCG@20
=======  ====  ====  =====  =================================  ==========  =========  ============
dot      0.2   5e-2  ep 24  30 % edge dropout, all targets     0.2773      0.2905     0.3180
dot      0.2   5e-2  —      30 % edge dropout, dropped targets  0.2647 (ep 32, stopped by hand)
dot      0.2   5e-2  ep 24  refit on train, 24 / 32 epochs     —           0.2913 / 0.2937  0.3233 / 0.3227
cosine   0.1   1e-3  ep 18                                     0.2782      0.2943     0.3248
cosine   0.1   1e-3  ep 18  + refit                            —           0.2998     0.3301
cosine   0.1   1e-2  ep 8                                      0.2727      0.2871     0.3139
cosine   0.07  1e-3  —      0.2592 at ep 18, stopped by hand
cosine   0.2   1e-3  —      0.2714 at ep 36, stopped by hand
cosine   0.1   1e-4  ep 18  lr 1e-2                            0.2764      0.2918     0.3186
cosine   0.12  1e-4  ep 34                                     0.2824      0.2979     0.3307
cosine   0.12  1e-4  ep 34  + refit                            —           0.3046     0.3365
cosine   0.12  1e-4  ep 34  2 layers                           0.2830      0.2985     0.3302
cosine   0.18  1e-4  ep 44                                     0.2801      0.2946     0.3279
cosine   0.15  1e-4  ep 34  lr 5e-2                            0.2824      0.2997     0.3325
cosine   0.15  1e-4  ep 54  **chosen** (best valid)            0.2843      0.2997     0.3337
cosine   0.15  1e-4  ep 54  + refit: **the default**           —           0.3036     0.3388
=======  ====  ====  =====  =================================  ==========  =========  ============

For reference on the same split (issue 3): EASE(λ=500) 0.288 / 0.330, PureSVD
0.259 / 0.295, the seed's LightGCN prototype 0.259 / 0.282.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from movierec.errors import MovierecError

MODELS = ("lightgcn", "ngcf")
LOSSES = ("softmax", "bpr")
PROPAGATIONS = ("csr", "edge_index")
INFERENCE_GRAPHS = ("fit", "train")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (recorded in the bundle's config.json).

    ``batch_size`` counts users per step for the softmax loss and (user,
    positive) pairs per step for BPR. ``epochs`` is a ceiling: training stops
    earlier when validation Recall@20 has not improved for ``patience``
    evaluations, or when ``time_budget`` seconds have passed (0 = no budget).
    """

    model: str = "lightgcn"
    preset: str = "fast"
    loss: str = "softmax"
    propagation: str = "csr"
    dim: int = 64
    layers: int = 3
    lr: float = 1e-3
    batch_size: int = 2048
    epochs: int = 100
    weight_decay: float = 1e-4
    temperature: float = 0.2
    # Score = cosine of the final embeddings instead of their dot product (both are served as plain
    # inner products: the served vectors are then unit length).
    cosine: bool = False
    # After early stopping, retrain on all of train (fit + valid) for the chosen number of epochs.
    refit: bool = False
    eval_every: int = 1
    patience: int = 5
    time_budget: float = 0.0
    seed: int = 42
    init_std: float = 0.1
    inference_graph: str = "train"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, TrainConfig] = {
    "paper": TrainConfig(
        preset="paper",
        loss="bpr",
        propagation="edge_index",
        dim=64,
        layers=3,
        lr=1e-3,
        batch_size=2048,
        epochs=1000,
        weight_decay=1e-4,
        eval_every=1,
        patience=10,
    ),
    "fast": TrainConfig(
        preset="fast",
        loss="softmax",
        propagation="csr",
        dim=256,
        layers=3,
        lr=3e-2,
        batch_size=1024,
        epochs=200,
        weight_decay=1e-4,
        temperature=0.15,
        cosine=True,
        refit=True,
        eval_every=2,
        patience=10,
    ),
}


# Settings a preset changes for one model only (applied before the user's own overrides). NGCF's
# concatenated, per-layer-normalised output is (L+1)·dim wide and each layer has two dense weight
# matrices: at 256 dimensions an ML-1M epoch took 15 s and reached only 0.156 valid Recall@20 in
# 10 epochs (time budget). At 64 dimensions, lr 1e-2, both peak at epoch 10: L2 1e-3 valid 0.207,
# test Recall@20 0.216 / NDCG@20 0.230; L2 1e-2 valid 0.209, test 0.219 / 0.233 (kept; one thread,
# shared machine, 2-4 min with early stopping). Those runs used dot-product scores at τ 0.2, kept here.
MODEL_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("fast", "ngcf"): {"dim": 64, "lr": 1e-2, "weight_decay": 1e-2, "temperature": 0.2, "cosine": False},
}


def resolve_config(preset: str, **overrides: Any) -> TrainConfig:
    """The preset with every non-None override applied, validated."""
    if preset not in PRESETS:
        raise MovierecError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise MovierecError(f"unknown training setting(s): {', '.join(sorted(unknown))}")
    given = {k: v for k, v in overrides.items() if v is not None}
    model_defaults = MODEL_DEFAULTS.get((preset, str(given.get("model", "lightgcn"))), {})
    config = replace(PRESETS[preset], **{**model_defaults, **given})
    check_config(config)
    return config


def check_config(config: TrainConfig) -> None:
    """Raise MovierecError naming the first setting that cannot work."""
    if config.model not in MODELS:
        raise MovierecError(f"unknown model {config.model!r}; choose one of {', '.join(MODELS)}")
    if config.loss not in LOSSES:
        raise MovierecError(f"unknown loss {config.loss!r}; choose one of {', '.join(LOSSES)}")
    if config.propagation not in PROPAGATIONS:
        raise MovierecError(f"unknown propagation {config.propagation!r}; choose one of {', '.join(PROPAGATIONS)}")
    if config.inference_graph not in INFERENCE_GRAPHS:
        raise MovierecError(
            f"inference graph must be one of {', '.join(INFERENCE_GRAPHS)}, got {config.inference_graph!r}"
        )
    if config.model == "ngcf" and config.propagation != "csr":
        raise MovierecError("NGCF propagates over the normalised CSR adjacency only (use --preset fast)")
    for name in ("dim", "epochs", "batch_size", "eval_every", "patience"):
        if getattr(config, name) <= 0:
            raise MovierecError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(config, name)}")
    for name in ("lr", "temperature", "init_std"):
        if not getattr(config, name) > 0:
            raise MovierecError(f"{name.replace('_', '-')} must be positive, got {getattr(config, name)}")
    if config.layers < 0:
        raise MovierecError(f"layers must be >= 0, got {config.layers}")
    if config.weight_decay < 0 or config.time_budget < 0:
        raise MovierecError("weight-decay and time-budget must not be negative")
