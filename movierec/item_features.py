"""From a movie's metadata to a served item vector, in numpy only (the index and the server never import torch).

Two parts travel in a model bundle so a movie nobody has rated yet can be scored:

* :class:`ItemEncoder` (``item_features.json``): genre vocabulary and year normalisation. A movie becomes
  ``[multi-hot genres | (year - mean) / std | year unknown]``; a genre outside the vocabulary is ignored.
* :class:`ItemTower` (``item_tower_w{k}.npy``, ``item_tower_b{k}.npy``): dense layers
  ``h_{k+1} = act(h_k W_kᵀ + b_k)`` with ReLU between layers and none after the last, then unit length when the
  bundle's vectors are cosine-scored. A GraphSAGE bundle stores its trained item tower (the model's forward pass
  for an item without neighbours); a LightGCN bundle gets a ridge regression from features to its item vectors
  (:func:`fit_ridge`), fitted on the items that had training positives.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from movierec.bundle.manifest import Manifest, listed_file, load_json
from movierec.bundle.npy import read_npy
from movierec.errors import BundleError

SPEC_FILE = "item_features.json"
RIDGE_ALPHA = 0.1  # the best of 0.1..1000 on the cold-items protocol's validation movies (cold_items.md)


def tower_files(layer: int) -> tuple[str, str]:
    return f"item_tower_w{layer}.npy", f"item_tower_b{layer}.npy"


@dataclass(frozen=True)
class ItemEncoder:
    """Genre vocabulary and year normalisation, fixed at training time."""

    genres: tuple[str, ...]
    year_mean: float
    year_std: float

    @classmethod
    def fit(cls, genres: Sequence[Sequence[str]], years: Sequence[int | None]) -> ItemEncoder:
        """Vocabulary = every genre seen (sorted); year mean and spread over the known years (1 if none)."""
        known = np.array([y for y in years if y is not None], dtype=np.float64)
        mean = float(known.mean()) if known.size else 0.0
        std = float(known.std()) if known.size > 1 and known.std() > 0 else 1.0
        return cls(tuple(sorted({g for names in genres for g in names})), mean, std)

    @property
    def width(self) -> int:
        return len(self.genres) + 2

    def encode(self, genres: Sequence[Sequence[str]], years: Sequence[int | None]) -> npt.NDArray[np.float32]:
        """One feature row per movie (see the module docstring)."""
        column = {name: j for j, name in enumerate(self.genres)}
        out = np.zeros((len(genres), self.width), dtype=np.float32)
        for row, (names, year) in enumerate(zip(genres, years, strict=True)):
            for name in names:
                if name in column:
                    out[row, column[name]] = 1.0
            if year is None:
                out[row, -1] = 1.0
            else:
                out[row, -2] = (year - self.year_mean) / self.year_std
        return out

    def to_json(self) -> dict[str, Any]:
        return {"genres": list(self.genres), "year_mean": self.year_mean, "year_std": self.year_std}

    @classmethod
    def from_json(cls, raw: Any) -> ItemEncoder:
        try:
            genres = tuple(raw["genres"])
            mean, std = float(raw["year_mean"]), float(raw["year_std"])
        except (TypeError, KeyError, ValueError) as exc:
            raise BundleError(f"{SPEC_FILE}: malformed encoder ({exc!r})") from None
        if not all(isinstance(g, str) for g in genres) or not np.isfinite([mean, std]).all() or std <= 0:
            raise BundleError(f"{SPEC_FILE}: encoder genres must be strings and the year spread positive")
        return cls(genres, mean, std)


@dataclass(frozen=True)
class ItemTower:
    """Dense layers from encoded features to an item vector (module docstring)."""

    weights: tuple[npt.NDArray[np.float32], ...]  # [out, in] each
    biases: tuple[npt.NDArray[np.float32], ...]  # [out] each
    normalize: bool

    def __call__(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        hidden = np.asarray(features, dtype=np.float32)
        for layer, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            hidden = hidden @ weight.T + bias
            if layer < len(self.weights) - 1:
                hidden = np.maximum(hidden, 0.0)
        if self.normalize:
            hidden = hidden / np.maximum(np.linalg.norm(hidden, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(hidden, dtype=np.float32)


@dataclass(frozen=True)
class ItemFeatureModel:
    """What turns a movie's metadata into its vector: encoder, tower, and where the tower came from."""

    encoder: ItemEncoder
    tower: ItemTower
    source: str  # "graphsage": the trained model's own item tower; "ridge": fitted to the item vectors

    def vectors(self, genres: Sequence[Sequence[str]], years: Sequence[int | None]) -> npt.NDArray[np.float32]:
        return self.tower(self.encoder.encode(genres, years))

    def write(self, directory: Path) -> list[Path]:
        """Write the spec and the tower arrays into ``directory``; returns the paths written."""
        spec = {"encoder": self.encoder.to_json(), "layers": len(self.tower.weights), "normalize": self.tower.normalize}
        (directory / SPEC_FILE).write_text(json.dumps({**spec, "source": self.source}, indent=2))
        written = [directory / SPEC_FILE]
        for layer, (weight, bias) in enumerate(zip(self.tower.weights, self.tower.biases, strict=True)):
            w_name, b_name = tower_files(layer)
            np.save(directory / w_name, np.ascontiguousarray(weight, dtype=np.float32))
            np.save(directory / b_name, np.ascontiguousarray(bias, dtype=np.float32))
            written += [directory / w_name, directory / b_name]
        return written


def read_item_feature_model(directory: Path, manifest: Manifest, dim: int) -> ItemFeatureModel | None:
    """The bundle's feature model when its manifest lists one (None otherwise); checked shape by shape."""
    if SPEC_FILE not in manifest.files:
        return None
    raw = load_json(listed_file(manifest, directory, SPEC_FILE))
    if not isinstance(raw, dict) or not isinstance(raw.get("layers"), int) or not 1 <= raw["layers"] <= 8:
        raise BundleError("malformed spec (needs 'layers' between 1 and 8)", path=directory / SPEC_FILE)
    encoder = ItemEncoder.from_json(raw.get("encoder"))
    weights, biases = [], []
    width = encoder.width
    for layer in range(raw["layers"]):
        w_name, b_name = tower_files(layer)
        weight = read_npy(listed_file(manifest, directory, w_name), np.float32, 2)
        bias = read_npy(listed_file(manifest, directory, b_name), np.float32, 1)
        if weight.shape[1] != width or bias.shape != (weight.shape[0],) or not np.isfinite(weight).all():
            raise BundleError(f"item tower layer {layer} does not fit its input width {width}", path=directory / w_name)
        weights.append(weight)
        biases.append(bias)
        width = weight.shape[0]
    if width != dim:
        raise BundleError(f"item tower outputs {width} dimensions, the vectors have {dim}", path=directory / SPEC_FILE)
    tower = ItemTower(tuple(weights), tuple(biases), bool(raw.get("normalize", False)))
    return ItemFeatureModel(encoder, tower, str(raw.get("source", "unknown")))


def unit_length(vectors: npt.NDArray[np.float32]) -> bool:
    """True when every row has length 1 (a cosine-scored bundle)."""
    norms = np.linalg.norm(vectors, axis=1)
    return bool(norms.size) and bool(np.allclose(norms, 1.0, atol=1e-3))


def fit_ridge(
    encoder: ItemEncoder,
    genres: Sequence[Sequence[str]],
    years: Sequence[int | None],
    vectors: npt.NDArray[np.float32],
    alpha: float = RIDGE_ALPHA,
) -> ItemFeatureModel:
    """Ridge regression ``vector ≈ W·features + b`` (closed form, intercept not penalised) as a one-layer tower."""
    features = encoder.encode(genres, years).astype(np.float64)
    targets = np.asarray(vectors, dtype=np.float64)
    mean_x, mean_y = features.mean(axis=0), targets.mean(axis=0)
    x, y = features - mean_x, targets - mean_y
    gram = x.T @ x + alpha * np.eye(x.shape[1])
    weight = np.linalg.solve(gram, x.T @ y).T  # [dim, width]
    bias = mean_y - weight @ mean_x
    tower = ItemTower((weight.astype(np.float32),), (bias.astype(np.float32),), unit_length(vectors))
    return ItemFeatureModel(encoder, tower, "ridge")
