"""Training settings: ``TrainConfig()`` is our recipe, exactly what ``recctl train`` runs with no options.

Two named recipes exist, and only two (:data:`PRESETS`):

* ``fast`` — ``TrainConfig()`` itself. A full-softmax loss over all items on
  the cosine of the final LightGCN user and item embeddings, for batches of
  users on a propagation operator built once; early stopping on the
  validation slice once its Recall@20 stops rising; then the model keeps
  training on all of train (fit + validation) while the learning rate is
  annealed to zero, so the kept model has learned from every training
  positive. How the values were chosen, with the runs behind them:
  ``benchmarks/results/sweeps.md``.
* ``paper`` — the stock recipe of the LightGCN paper and PyG's example (BPR,
  one uniform negative, Adam lr 1e-3, 2048 pairs per batch, 64 dimensions),
  kept so the speed and accuracy benchmarks can compare against it.

``MODEL_DEFAULTS`` holds what the ``fast`` recipe changes for NGCF, whose
layers and output width differ.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from movierec.errors import MovierecError

MODELS = ("lightgcn", "ngcf")
LOSSES = ("softmax", "bpr")
PROPAGATIONS = ("csr", "edge_index")
INFERENCE_GRAPHS = ("fit", "train")
# What the fast recipe's small-data search tries beside its own values (see TrainConfig.search_space):
# with them, a 2 x 2 grid over temperature {0.15, 0.2} and layers {3, 2}, and the grid's usual winner on
# small sparse data (temperature 0.2, 2 layers) with ten times the L2: on a catalogue of mostly rarely rated
# movies (ml-latest-small's shape) it validated best and lifted test NDCG@20 by 0.0045 (sweeps.md, section 9).
SEARCH_SPACE: tuple[tuple[tuple[str, Any], ...], ...] = (
    (("temperature", 0.2),),
    (("layers", 2),),
    (("temperature", 0.2), ("layers", 2)),
    (("temperature", 0.2), ("layers", 2), ("weight_decay", 1e-3)),
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (recorded in the bundle's config.json).

    Each default is the ``fast`` recipe's value; the comment says what the
    field means, its unit, and why this value.
    """

    # Which graph recommender: "lightgcn" (the served default) or "ngcf" (the other GNN compared in benchmarks).
    model: str = "lightgcn"
    # Name of the recipe these values came from (recorded in bundles; see PRESETS).
    preset: str = "fast"
    # "softmax": every item is a negative for every user at once (a few thousand items make it cheap) and
    # it ranks the whole catalogue; it is far ahead of BPR in benchmarks/results/train_speed.md.
    # "bpr": the paper's pairwise loss.
    loss: str = "softmax"
    # "csr": our normalised adjacency built once, many times cheaper per epoch than "edge_index" (PyG's
    # stock model, which normalises again on every batch; identical outputs; train_speed.md measures it).
    propagation: str = "csr"
    # Embedding width (floats per user and item). 256 beat 64 and 128 on validation; 384 did not beat 256
    # and costs half again as much per epoch.
    dim: int = 256
    # LightGCN propagation layers (graph hops). 3 as in the paper; 2 was no better on validation.
    layers: int = 3
    # Adam learning rate while selecting on validation (the refit anneals it from here to zero).
    # High because full-softmax steps are few: 6 per epoch on ML-1M.
    lr: float = 3e-2
    # Users per optimiser step for "softmax", (user, positive) pairs per step for "bpr".
    batch_size: int = 1024
    # Ceiling on epochs (passes over the users) of the selection phase; early stopping ends it sooner.
    epochs: int = 200
    # L2 weight on the layer-0 embeddings a batch touches (per batch row). Cosine scores are scale-free,
    # so this only keeps the embeddings bounded: 1e-3 and 1e-2 lost validation recall.
    weight_decay: float = 1e-4
    # Softmax temperature (dimensionless: scores are cosines in [-1, 1]). 0.15 was the validation best
    # between 0.07 and 0.2.
    temperature: float = 0.15
    # Score = cosine of the final embeddings rather than their dot product (served as unit vectors, so a
    # plain inner-product index still ranks by cosine). It beat dot products on validation.
    cosine: bool = True
    # After early stopping, keep training on all of train (fit + valid) with the learning rate annealed
    # to zero (half a cosine) for refit_fraction x the selection epochs: the kept model then learned from
    # the 10 % of train early stopping held out, and the annealing settles it where a constant rate wanders.
    refit: bool = True
    # Length of the refit as a fraction of the selection phase's epochs (0.5: as good as longer refits).
    refit_fraction: float = 0.5
    # Validate every this many epochs (a full ranking of every item for every validation user; every
    # second epoch halves that cost and still sees the plateau within two epochs).
    eval_every: int = 2
    # Evaluations without a gain before the selection phase stops (4 x 2 = 8 epochs past the last gain).
    patience: int = 4
    # When the selection's last validation is more than this fraction below its best, the epochs after the
    # best overfit (seen on large sparse data: dot-product Recall@20 fell from 0.166 to 0.053 in 22 epochs), so
    # there is no refit and the best validated parameters are kept. A plateau's noise stays well inside it
    # (ML-1M's seeds end within 1 % of their best).
    overfit_drop: float = 0.05
    # A gain is validation Recall@20 above the best so far by more than this fraction of it (0.5 %):
    # past its rise the curve is a noisy plateau, and chasing noise doubled training time for nothing.
    min_gain: float = 0.005
    # On data whose fit slice has at most this many positives (0 = never), the selection phase is run
    # once more for each entry of search_space and the best validation Recall@20 wins. Small data is
    # where a closed-form baseline is most dangerous and a selection run costs least; ML-1M (~414,000
    # fit positives) stays a single run, inside its time goal.
    search_max_positives: int = 150_000
    # Alternatives to the recipe's own values tried by that search, each a tuple of (field, value).
    search_space: tuple[tuple[tuple[str, Any], ...], ...] = SEARCH_SPACE
    # Weight of a positive's loss term by its place in the user's history: exp(recency x (r - 1)), r from 0 (the
    # user's oldest positive) to 1 (the latest; positives at one timestamp share the later rank). 0: all alike.
    # See movierec.trainer.recency.
    recency: float = 0.0
    # When the train positives have timestamps, the selection runs once more with recency = this and validation
    # keeps the better (0: never). On ML-1M with each user's latest positives held out it lifted validation
    # Recall@20 from 0.183 to 0.252; on ML-1M's random split validation turns it down (0.173 vs 0.280; trial_cut
    # stops the trial at epoch 8). Strengths compared on validation: benchmarks/results/sweeps.md, section 8.
    recency_trial: float = 6.0
    # ... when the fit slice has at most this many positives: the trial is one more selection run, minutes
    # each past this size (the large_positives scale). 0: never.
    recency_max_positives: int = 2_000_000
    # A selection run after the first (a search alternative, a score or recency trial) stops as soon as one of
    # its validations, from epoch trial_cut_after on, finds its best Recall@20 more than this fraction below what
    # the leading run had reached by the same epoch: such a run is not going to be kept, and its remaining epochs
    # would buy nothing (recency trials on random splits trailed by 26-35 % from epoch 8 and ran 16-18 epochs, 64 on
    # 30,000 synthetic users). On the curves measured, runs that went on to overtake the leader trailed it by
    # up to 7.9 % from epoch 8 on (5 % would have cut one) and by up to 17 % before; a scratch run found one
    # that trailed by just over 10 % and overtook by under 1 %, so a cut can cost a run that would have won
    # narrowly. On all 16 generalise.md runs the kept model is the one chosen without cuts (sweeps.md,
    # section 10). 0: every run goes to its own plateau.
    trial_cut: float = 0.1
    trial_cut_after: int = 8
    # Seconds after which training stops and keeps what it has (0 = no budget).
    time_budget: float = 0.0
    # Seed of the initial embeddings and the batch order (the split has its own seed).
    seed: int = 42
    # Standard deviation of the normal initial embeddings; beside the learning rate it sets how far the
    # first Adam steps move them (kept from the first recipe, not tuned).
    init_std: float = 0.1
    # Graph the served vectors propagate over: "train" (fit + valid edges: every known positive) or "fit".
    inference_graph: str = "train"

    # Scale rules (issue 13): by counts, never by dataset name; ScalePlan records what they chose. Each
    # optimiser step propagates the whole graph (cost ~ edges), so an epoch has at most this many steps:
    # past batch_size x max_steps_per_epoch users the batch grows instead, and an epoch costs ~ edges,
    # not users x edges. ML-1M (6,040 users, 6 steps of 1,024) is below it and unchanged.
    max_steps_per_epoch: int = 8
    # Memory bound on a step's users (its logits are users x scored items): past max_steps_per_epoch x
    # this many users, an epoch is a fresh random sample of that many users.
    max_batch_users: int = 16_384
    # Catalogues up to this many items get the full softmax; larger ones a sampled softmax over
    # sampled_negatives items shared by the step, drawn by fit popularity, with the logQ correction, unless
    # a step's logits (its users x the catalogue) are no more than batch_size x this: few users with a wide
    # catalogue (ml-latest-small's shape: 610 users, 9,742 movies) keep the full softmax, which is cheap there
    # and ranked better (sweeps.md, section 9).
    full_softmax_max_items: int = 8_192
    # The step's logits are users x negatives, a cost that grows with the users rather than the edges: at
    # 100k users 4,096 made the epoch 1.8x linear; 2,048 reached the same validation Recall@20 at a lower
    # cost (sweeps.md, section 7; scale.md).
    sampled_negatives: int = 2_048
    # Data with more users than dot_min_users is scored by dot products, whatever ``cosine`` says. On 100k
    # synthetic users x 20k items the cosine model learned slowly (validation Recall@20 0.059 after 240 s, 40 %
    # of popularity's) where the dot product passed popularity within 40 s; a full softmax showed the
    # same dot-product curve as the sampled one, so the sampling is not the cause (sweeps.md, section 7).
    # The catalogue's size is not what decides: at 610 users with 8,357 items the cosine won clearly, and at
    # 30,000 users x 7,938 items the dot product led after 100 s but the cosine, trained to its plateau, won
    # on validation (0.2020 vs 0.1925; sections 7b, 9). Up to cosine_max_users the recipe's score stands;
    # in between, validation chooses (one more selection run, with dot products at dot_lr).
    cosine_max_users: int = 8_192
    dot_min_users: int = 32_768
    # Adam learning rate (at most) for dot-product scores: with lr 3e-2 the dot-product model overfit within a
    # few epochs there (validation Recall@20 peaked at 0.166 on epoch 4, then fell), with 1e-2 it was still
    # rising at 0.181 on epoch 12 (sweeps.md, section 7).
    dot_lr: float = 1e-2
    # Share of those negatives drawn uniformly over the catalogue, the rest by fit popularity (the logQ
    # correction uses the mixture). Popularity alone almost never draws a rare item, so nothing ever pushes
    # a rare item's score down and it can drift to the top of every list.
    uniform_negatives_share: float = 0.5
    # Fit slices with more positives than this train at min(dim, large_dim): the propagation's cost is
    # edges x dim, and at 5 M ratings dim 256 costs ~10 s a step on 2 cores (dim 64: ~2 s).
    large_positives: int = 2_000_000
    large_dim: int = 64
    # Validation ranks every item for at most this many validation users (a fixed random sample).
    max_valid_users: int = 10_000

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, TrainConfig] = {
    "fast": TrainConfig(),
    "paper": TrainConfig(
        preset="paper",
        loss="bpr",
        propagation="edge_index",
        dim=64,
        lr=1e-3,
        batch_size=2048,
        epochs=1000,
        temperature=0.2,
        cosine=False,
        refit=False,
        eval_every=1,
        patience=10,
        min_gain=0.0,
        search_max_positives=0,
        recency_trial=0.0,
    ),
}


# What the fast recipe changes for NGCF (applied before the user's own overrides). Its output is
# (L+1)·dim wide with two dense matrices per layer, so 64 dimensions; its settings come from a short
# NGCF-only sweep (benchmarks/results/sweeps.md).
MODEL_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("fast", "ngcf"): {"dim": 64, "lr": 1e-2, "weight_decay": 1e-2, "temperature": 0.2, "cosine": False},
}


@dataclass(frozen=True)
class ScalePlan:
    """What the scale rules chose for one data size (recorded in the bundle, printed by ``recctl train``)."""

    users: int  # users with fit positives
    items: int
    fit_positives: int
    dim: int
    batch_users: int  # users per step (softmax) or pairs per step (bpr)
    steps_per_epoch: int
    users_per_epoch: int  # < users: each epoch is a fresh random sample of this many
    negatives: int  # 0: full softmax over every item
    cosine: bool  # score = cosine of the final embeddings (else their dot product)
    lr: float  # Adam learning rate (dot products: at most dot_lr)
    valid_users: int  # ceiling on validation users ranked per evaluation
    # Cosine scores, but between cosine_max_users and dot_min_users: validation also tries dot products at dot_lr.
    dot_trial: bool = False

    def applied_to(self, config: TrainConfig) -> TrainConfig:
        """``config`` with the fields these rules set (dim, score, learning rate): what a run trains with."""
        return replace(config, dim=self.dim, cosine=self.cosine, lr=self.lr)

    def describe(self) -> str:
        softmax = "full softmax" if self.negatives == 0 else f"sampled softmax ({self.negatives} negatives, logQ)"
        score = "cosine" if self.cosine else "dot-product"
        trial = "; dot products also tried on validation" if self.dot_trial else ""
        sample = "" if self.users_per_epoch >= self.users else f", a sample of {self.users_per_epoch:,} users"
        return (
            f"{self.users:,} users x {self.items:,} items, {self.fit_positives:,} fit positives: dim {self.dim}, "
            f"{self.steps_per_epoch} steps of {self.batch_users:,} per epoch{sample}, {softmax}, "
            f"{score} scores (lr {self.lr:g}{trial}), "
            f"validation on <= {self.valid_users:,} users"
        )


def plan_for(config: TrainConfig, users: int, items: int, fit_positives: int) -> ScalePlan:
    """Apply the scale rules of ``config`` to the counts of a fit slice (see the fields' comments)."""
    dim = min(config.dim, config.large_dim) if fit_positives > config.large_positives else config.dim
    cosine = config.cosine and users <= config.dot_min_users
    dot_trial = cosine and users > config.cosine_max_users  # the users between the two thresholds
    # A rule for the scores it changed: the paper's dot-product recipe keeps its own rate.
    lr = min(config.lr, config.dot_lr) if config.cosine and not cosine else config.lr
    if config.loss != "softmax":  # the paper's BPR recipe keeps its pairs-per-step epoch (a reference)
        steps = max(1, -(-fit_positives // config.batch_size))
        return ScalePlan(
            users,
            items,
            fit_positives,
            dim,
            config.batch_size,
            steps,
            users,
            0,
            cosine,
            lr,
            config.max_valid_users,
            dot_trial,
        )
    batch = config.batch_size
    if users > batch * config.max_steps_per_epoch:
        batch = min(-(-users // config.max_steps_per_epoch), max(config.max_batch_users, config.batch_size))
    steps = max(1, min(-(-users // batch), config.max_steps_per_epoch))
    cheap = min(users, batch) * items <= config.batch_size * config.full_softmax_max_items
    negatives = 0 if items <= config.full_softmax_max_items or cheap else config.sampled_negatives
    return ScalePlan(
        users,
        items,
        fit_positives,
        dim,
        batch,
        steps,
        min(users, batch * steps),
        negatives,
        cosine,
        lr,
        config.max_valid_users,
        dot_trial,
    )


# Settings earlier versions recorded in bundles and this one no longer has (their rule changed): a bundle's
# config.json may still name them, and retraining from it ignores them.
RETIRED_SETTINGS = ("cosine_max_items",)


def describe_overrides(overrides: dict[str, Any]) -> str:
    """A selection run's settings in words, as ``recctl train`` prints them and the training curve labels them."""
    return ", ".join(f"{name} {value}" for name, value in overrides.items()) or "the recipe's own settings"


def resolve_config(preset: str, **overrides: Any) -> TrainConfig:
    """The preset with every non-None override applied, validated."""
    if preset not in PRESETS:
        raise MovierecError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    overrides = {name: value for name, value in overrides.items() if name not in RETIRED_SETTINGS}
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise MovierecError(f"unknown training setting(s): {', '.join(sorted(unknown))}")
    given = {k: v for k, v in overrides.items() if v is not None}
    if "search_space" in given:  # from a bundle's config.json, where tuples became lists
        given["search_space"] = tuple(tuple((str(n), v) for n, v in alt) for alt in given["search_space"])
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
    if config.recency < 0 or config.recency_trial < 0 or config.recency_max_positives < 0:
        raise MovierecError("recency, recency-trial and recency-max-positives must not be negative")
    if config.recency > 0 and config.loss != "softmax":
        raise MovierecError("recency weights the softmax loss's positives; the bpr loss takes none (use --recency 0)")
    if config.model == "ngcf" and config.propagation != "csr":
        raise MovierecError("NGCF propagates over the normalised CSR adjacency only (use --preset fast)")
    for name in (
        "dim",
        "epochs",
        "batch_size",
        "eval_every",
        "patience",
        "max_steps_per_epoch",
        "max_batch_users",
        "full_softmax_max_items",
        "sampled_negatives",
        "large_dim",
        "max_valid_users",
    ):
        if getattr(config, name) <= 0:
            raise MovierecError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(config, name)}")
    for name in ("lr", "dot_lr", "temperature", "init_std", "refit_fraction"):
        if not getattr(config, name) > 0:
            raise MovierecError(f"{name.replace('_', '-')} must be positive, got {getattr(config, name)}")
    searchable = {f.name for f in fields(TrainConfig)} - {"search_space", "search_max_positives", "preset"}
    for alternative in config.search_space:
        for name, _ in alternative:
            if name not in searchable:
                raise MovierecError(f"search space names an unknown or unsearchable setting {name!r}")
    if config.layers < 0:
        raise MovierecError(f"layers must be >= 0, got {config.layers}")
    if config.weight_decay < 0 or config.time_budget < 0 or config.min_gain < 0 or config.search_max_positives < 0:
        raise MovierecError("weight-decay, min-gain, time-budget and search-max-positives must not be negative")
    if not 0 <= config.cosine_max_users <= config.dot_min_users:
        raise MovierecError(
            f"need 0 <= cosine-max-users <= dot-min-users, got {config.cosine_max_users} and {config.dot_min_users}"
        )
    if config.trial_cut_after < 0:
        raise MovierecError(f"trial-cut-after must not be negative, got {config.trial_cut_after}")
    for name in ("uniform_negatives_share", "overfit_drop", "trial_cut"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            raise MovierecError(f"{name.replace('_', '-')} must be between 0 and 1, got {getattr(config, name)}")
