"""GraphSAGE's training settings, importable without torch (``recctl train`` resolves them before torch loads)."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, replace
from typing import Any

from movierec.errors import MovierecError

# recctl train flags that name LightGCN/NGCF settings GraphSAGE does not have: refused rather than ignored.
LIGHTGCN_ONLY_FLAGS = {
    "loss": "--loss",
    "propagation": "--propagation",
    "weight_decay": "--weight-decay",
    "refit_fraction": "--refit-fraction",
    "search_max_positives": "--search-max-positives",
    "score": "--score",
    "refit": "--refit",
}
# recctl train flags GraphSAGE takes (argparse dest = SageConfig field).
SAGE_FLAGS = ("epochs", "dim", "layers", "lr", "batch_size", "temperature", "patience", "min_gain", "eval_every",
              "seed", "time_budget")  # fmt: skip


@dataclass(frozen=True)
class SageConfig:
    """GraphSAGE's settings (recorded in the bundle's config.json); ``recctl train`` flags override them."""

    model: str = "graphsage"
    dim: int = 64  # width of every layer and of the served vectors
    layers: int = 2  # SAGE layers = hops sampled
    fanouts: tuple[int, ...] = (15, 10)  # neighbours kept per node at hop 1, 2, ...
    lr: float = 5e-3  # Adam learning rate
    batch_size: int = 2048  # (user, movie) positives per step
    negatives: int = 2048  # uniformly drawn movies added to each step's candidates
    temperature: float = 0.1  # softmax temperature on cosines
    hidden_share: float = 0.2  # share of a step's movies trained without neighbours (the new-movie path)
    epochs: int = 40  # ceiling on epochs (passes over the fit positives)
    eval_every: int = 1
    patience: int = 3
    min_gain: float = 0.005
    time_budget: float = 0.0  # seconds (0: none); the best validated parameters so far are kept
    seed: int = 42
    init_std: float = 0.1

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "fanouts": list(self.fanouts)}

    def check(self) -> None:
        for name in ("dim", "batch_size", "epochs", "eval_every", "patience"):
            if getattr(self, name) <= 0:
                raise MovierecError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.layers < 1 or len(self.fanouts) != self.layers or min(self.fanouts) < 1:
            raise MovierecError(f"graphsage needs >= 1 layer and one positive fanout per layer, got {self.fanouts}")
        if not (self.lr > 0 and self.temperature > 0) or self.negatives < 0 or self.time_budget < 0:
            raise MovierecError("lr and temperature must be positive; negatives and time-budget not negative")
        if not 0 <= self.hidden_share < 1:
            raise MovierecError(f"hidden share must be in [0, 1), got {self.hidden_share}")


def sage_config(**overrides: Any) -> SageConfig:
    """The defaults with every non-None override applied; ``layers`` alone resizes the fanouts."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if "layers" in given and "fanouts" not in given:
        given["fanouts"] = tuple((SageConfig.fanouts * given["layers"])[: given["layers"]])
    config = replace(SageConfig(), **given)
    config.check()
    return config


def sage_config_from_args(args: argparse.Namespace) -> SageConfig:
    """``recctl train --model graphsage``'s settings from its flags; a LightGCN-only flag is a one-line error."""
    given = [flag for dest, flag in LIGHTGCN_ONLY_FLAGS.items() if getattr(args, dest, None) is not None]
    if given or getattr(args, "preset", "fast") != "fast":
        raise MovierecError(f"graphsage does not take {', '.join(given) or '--preset'} (LightGCN/NGCF settings)")
    return sage_config(**{name: getattr(args, name, None) for name in SAGE_FLAGS})
