"""Training loop, presets and ``recctl train`` / ``recctl evaluate`` on tiny generated data."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from movierec.bundle import read_model_bundle
from movierec.bundle.csr import CSR
from movierec.clients.cli.main import main
from movierec.errors import MovierecError
from movierec.trainer.config import PRESETS, SEARCH_SPACE, TrainConfig, resolve_config
from movierec.trainer.data.split import Split
from movierec.trainer.models.lightgcn import LightGCN
from movierec.trainer.train import train_model

N_USERS, N_ITEMS = 80, 40


def taste_pairs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two taste groups: even users like items 0..19, odd users items 20..39 (14 each)."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for user in range(N_USERS):
        offset = 0 if user % 2 == 0 else 20
        liked = rng.choice(20, size=14, replace=False) + offset
        users.extend([user] * liked.size)
        items.extend(liked.tolist())
    return np.asarray(users), np.asarray(items)


def tiny_split() -> Split:
    users, items = taste_pairs(0)
    rng = np.random.default_rng(1)
    part = rng.choice(3, size=users.size, p=[0.7, 0.1, 0.2])  # fit / valid / test

    def csr(mask: np.ndarray) -> CSR:
        return CSR.from_pairs(users[mask], items[mask], N_USERS, N_ITEMS)

    return Split(
        user_ids=np.arange(1, N_USERS + 1, dtype=np.int64),
        item_ids=np.arange(1, N_ITEMS + 1, dtype=np.int64),
        seen=csr(part >= 0),
        train=csr(part <= 1),
        fit=csr(part == 0),
        valid=csr(part == 1),
        test=csr(part == 2),
        protocol={"split": "random", "seed": 1, "min_rating": 4.0},
    )


def write_ratings(folder: Path) -> Path:
    """A ratings.dat (+ movies.dat) in the ML-1M format: liked items rated 5, a few others rated 2."""
    folder.mkdir(parents=True, exist_ok=True)
    users, items = taste_pairs(2)
    lines = [f"{u + 1}::{i + 1}::5::97830{k:04d}" for k, (u, i) in enumerate(zip(users, items, strict=True))]
    disliked = [(u % 20 + 20 if u % 2 == 0 else u % 20) for u in range(N_USERS)]  # from the other group
    lines += [f"{u + 1}::{disliked[u] + 1}::2::978400000" for u in range(N_USERS)]
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n")
    genres = ("Drama", "Comedy", "Comedy|Drama", "Horror")  # varied, so genre diversity within a list is not 0
    movies = [f"{i + 1}::Movie {i + 1} (19{50 + i})::{genres[i % len(genres)]}" for i in range(N_ITEMS)]
    (folder / "movies.dat").write_text("\n".join(movies) + "\n", encoding="latin-1")
    return folder


@pytest.mark.parametrize(("loss", "batch_size", "lr"), [("softmax", 64, 0.02), ("bpr", 256, 0.05)])
def test_loss_decreases_and_validation_beats_chance(loss: str, batch_size: int, lr: float) -> None:
    config = resolve_config(
        "fast", loss=loss, dim=16, layers=2, lr=lr, batch_size=batch_size, epochs=30, eval_every=5, patience=10
    )
    result = train_model(tiny_split(), config, progress=False)
    losses = [record.loss for record in result.history]
    assert losses[-1] < 0.8 * losses[0]
    # random ranking of the ~30 unseen items hits about 20/30 of a user's held-out items at K=20;
    # a model that learned the two taste groups ranks the user's own group first and finds all of them
    assert result.best_valid_recall > 0.9
    assert result.user_vectors.shape == (N_USERS, 16) and result.item_vectors.dtype == np.float32


def test_stock_pyg_recipe_trains_on_the_edge_index() -> None:
    config = resolve_config("paper", dim=8, epochs=3, batch_size=256, lr=0.01)
    assert config.propagation == "edge_index" and config.loss == "bpr"
    result = train_model(tiny_split(), config, progress=False)
    assert len(result.history) == 3 and result.history[-1].loss < result.history[0].loss


def test_ngcf_trains_and_returns_concatenated_layers() -> None:
    config = resolve_config(
        "fast", search_max_positives=0, model="ngcf", dim=8, layers=2, epochs=2, eval_every=1, lr=0.01
    )
    result = train_model(tiny_split(), config, progress=False)
    assert result.item_vectors.shape == (N_ITEMS, 24)


def test_time_budget_stops_early_and_keeps_an_evaluated_checkpoint() -> None:
    config = resolve_config(
        "fast", search_max_positives=0, refit=False, dim=8, epochs=100_000, eval_every=1000, time_budget=0.5
    )
    result = train_model(tiny_split(), config, progress=False)
    assert result.stop_reason == "time budget"
    assert result.best_epoch == result.history[-1].epoch and result.best_valid_recall >= 0


def test_patience_stops_training() -> None:
    config = resolve_config("fast", search_max_positives=0, dim=8, epochs=1000, eval_every=1, patience=2, lr=0.05)
    result = train_model(tiny_split(), config, progress=False)
    assert result.stop_reason.startswith("no validation gain") and len(result.history) < 1000


def test_cosine_scoring_serves_unit_vectors_and_learns() -> None:
    config = resolve_config(
        "fast", search_max_positives=0, cosine=True, dim=16, layers=2, lr=0.02, batch_size=64, epochs=30, eval_every=5
    )
    result = train_model(tiny_split(), config, progress=False)
    np.testing.assert_allclose(np.linalg.norm(result.user_vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(result.item_vectors, axis=1), 1.0, rtol=1e-5)
    assert result.best_valid_recall > 0.9


def test_refit_keeps_training_on_all_of_train_with_the_rate_annealed() -> None:
    settings = {"dim": 16, "layers": 2, "lr": 0.02, "batch_size": 64, "epochs": 12, "eval_every": 3}
    plain = train_model(
        tiny_split(), resolve_config("fast", search_max_positives=0, refit=False, **settings), progress=False
    )
    refitted = train_model(
        tiny_split(),
        resolve_config("fast", search_max_positives=0, refit=True, refit_fraction=0.5, **settings),
        progress=False,
    )
    assert not plain.refitted and refitted.refitted
    assert refitted.best_epoch == plain.best_epoch  # the same selection run, then the refit
    assert refitted.refit_epochs == math.ceil(0.5 * refitted.selection_epochs)
    refit_records = [record for record in refitted.history if record.phase == "refit"]
    assert [record.epoch for record in refit_records] == list(
        range(refitted.selection_epochs + 1, refitted.selection_epochs + refitted.refit_epochs + 1)
    )
    assert all(record.valid_recall is None for record in refit_records)
    assert not np.allclose(refitted.item_vectors, plain.item_vectors)


def test_the_refit_anneals_the_learning_rate_to_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    from movierec.trainer import train as train_module

    rates: list[float] = []
    real_epoch = train_module._Stepper.epoch

    def spy(self: train_module._Stepper, should_stop: object) -> float:
        if self.positives.nnz == tiny_split().train.nnz:  # refit steppers train on all of train
            rates.append(self.optimizer.param_groups[0]["lr"])
        return real_epoch(self, should_stop)  # type: ignore[arg-type]

    monkeypatch.setattr(train_module._Stepper, "epoch", spy)
    config = resolve_config(
        "fast", search_max_positives=0, dim=8, layers=1, lr=0.04, epochs=8, eval_every=2, refit_fraction=1.0
    )
    result = train_model(tiny_split(), config, progress=False)
    assert len(rates) == result.refit_epochs == 8
    assert rates[0] == pytest.approx(0.04) and all(a > b for a, b in itertools.pairwise(rates))
    assert rates[-1] < 0.04 * 0.05


def test_a_selection_that_fell_below_its_best_is_not_refitted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation more than overfit_drop below its best: the best validated parameters are kept, no refit."""
    from movierec.trainer import train as train_module

    config = resolve_config("fast", search_max_positives=0, dim=8, layers=1, epochs=6, eval_every=2, overfit_drop=0.2)
    falling = iter([0.5, 0.45, 0.3])  # the last is 40 % below the best: past overfit_drop
    monkeypatch.setattr(train_module, "evaluate_vectors", lambda *args, **kwargs: {"recall@20": next(falling)})
    result = train_model(tiny_split(), config, progress=False)
    assert not result.refitted and result.best_epoch == 2
    assert result.stop_reason.endswith("no refit: validation fell more than 20% below its best")


def test_a_plateau_inside_the_overfit_drop_is_refitted(monkeypatch: pytest.MonkeyPatch) -> None:
    from movierec.trainer import train as train_module

    config = resolve_config("fast", search_max_positives=0, dim=8, layers=1, epochs=6, eval_every=2, overfit_drop=0.2)
    plateau = iter([0.5, 0.45, 0.41])  # 18 % below the best: inside overfit_drop
    monkeypatch.setattr(train_module, "evaluate_vectors", lambda *args, **kwargs: {"recall@20": next(plateau)})
    assert train_model(tiny_split(), config, progress=False).refitted


def test_only_a_real_gain_restarts_the_patience_count() -> None:
    from movierec.trainer.train import _BestSoFar

    model = LightGCN(3, 3, 2, 1)
    best = _BestSoFar(model, min_gain=0.01)
    for epoch, recall in enumerate([0.20, 0.25, 0.251, 0.252, 0.249], start=1):
        best.record(epoch, recall, model)
    assert best.epoch == 4 and best.recall == 0.252  # any improvement is kept
    assert best.evaluations_without_gain == 3  # but +0.4 % over 0.25 is not a gain of 1 %
    best.record(6, 0.26, model)
    assert best.evaluations_without_gain == 0


def test_small_data_searches_the_space_on_validation_and_keeps_the_best() -> None:
    config = resolve_config("fast", dim=8, layers=1, lr=0.05, batch_size=32, epochs=6, eval_every=2)
    split = tiny_split()
    assert split.fit.nnz <= config.search_max_positives
    result = train_model(split, config, progress=False)
    assert [trial.overrides for trial in result.search] == [{}, *(dict(alt) for alt in config.search_space)]
    best = max(result.search, key=lambda trial: trial.best_valid_recall)
    assert result.best_valid_recall == best.best_valid_recall
    # the first run with the best validation recall is kept (a tie does not replace it), and marked so
    assert [trial.kept for trial in result.search] == [trial is best for trial in result.search]
    assert result.config == replace(config, **best.overrides)
    single = train_model(split, replace(config, search_max_positives=split.fit.nnz - 1), progress=False)
    assert single.search == () and single.config == replace(config, search_max_positives=split.fit.nnz - 1)


def test_a_search_space_naming_an_unknown_setting_is_refused() -> None:
    with pytest.raises(MovierecError, match="unknown or unsearchable setting 'warp'"):
        resolve_config("fast", search_space=((("warp", 9),),))


def test_the_default_config_is_the_fast_preset_and_what_the_cli_runs() -> None:
    assert resolve_config("fast") == TrainConfig() == PRESETS["fast"]
    assert set(PRESETS) == {"fast", "paper"}


def test_a_refit_cut_by_the_time_budget_keeps_the_validated_vectors() -> None:
    config = resolve_config(
        "fast", search_max_positives=0, refit=True, dim=8, epochs=100_000, eval_every=1000, time_budget=0.5
    )
    result = train_model(tiny_split(), config, progress=False)
    assert not result.refitted
    assert result.stop_reason == "time budget; refit on train cut by the time budget (validated vectors kept)"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"model": "gcn"}, "unknown model 'gcn'"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"dim": -4}, "dim must be a positive integer"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"batch_size": 0}, "batch-size must be a positive integer"),
        ({"loss": "mse"}, "unknown loss"),
    ],
)
def test_bad_settings_are_refused(override: dict[str, object], message: str) -> None:
    with pytest.raises(MovierecError, match=message):
        resolve_config("fast", **override)


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(MovierecError, match="unknown preset"):
        resolve_config("slow")


# The tiny data is small enough for the small-data search; the tests that are not about it turn it off.
TINY_TRAIN = ["--dim", "8", "--layers", "2", "--epochs", "6", "--eval-every", "2", "--batch-size", "32"]
TINY_TRAIN += ["--search-max-positives", "0", "--recency-trial", "0"]


def test_cli_trains_a_readable_bundle_and_evaluate_recomputes_its_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = write_ratings(tmp_path / "data"), tmp_path / "bundle"
    assert main(["train", "--data", str(data), "--out", str(out), *TINY_TRAIN, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    bundle = read_model_bundle(out)
    assert bundle.n_users == N_USERS and bundle.n_items == N_ITEMS and bundle.dim == 8
    assert bundle.items.titles[0] == "Movie 1" and bundle.items.years[0] == 1950
    assert (out / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert bundle.config["train"]["dim"] == 8 and bundle.dataset["sha256"]
    assert bundle.metrics["recall@20"] == pytest.approx(summary["recall@20"])
    assert main(["evaluate", "--model", str(out), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    for name in ("recall@10", "ndcg@20", "precision@10", "seed_recall@20", "users_evaluated"):
        assert evaluated[name] == pytest.approx(bundle.metrics[name])
    assert evaluated["protocol"]["seed"] == 42 and evaluated["protocol"]["positives"] == "rating >= 4"


BEYOND_ACCURACY = ("coverage", "novelty", "average_popularity", "gini_index", "tail_percentage", "intra_list_diversity")


def test_evaluate_reports_beyond_accuracy_metrics_as_training_stored_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = write_ratings(tmp_path / "data"), tmp_path / "bundle"
    assert main(["train", "--data", str(data), "--out", str(out), *TINY_TRAIN, "--json"]) == 0
    capsys.readouterr()
    stored = read_model_bundle(out).metrics
    assert main(["evaluate", "--model", str(out), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    for name in (f"{metric}@{k}" for metric in BEYOND_ACCURACY for k in (10, 20)):
        assert evaluated[name] == pytest.approx(stored[name]), name
    assert 0 < evaluated["coverage@20"] <= 1 and 0 < evaluated["intra_list_diversity@20"] <= 1
    assert main(["evaluate", "--model", str(out)]) == 0
    table = capsys.readouterr().out
    assert all(f"{metric}@20" in table for metric in BEYOND_ACCURACY)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--preset", "paper", "--propagation", "csr"], {"propagation": "csr", "cosine": False, "refit": False}),
        (["--score", "dot", "--no-refit"], {"propagation": "csr", "cosine": False, "refit": False}),
        ([], {"propagation": "csr", "cosine": True, "refit": True}),
    ],
)
def test_cli_settings_reach_the_bundle_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], expected: dict[str, object]
) -> None:
    data, out = write_ratings(tmp_path / "data"), tmp_path / "bundle"
    assert main(["train", "--data", str(data), "--out", str(out), *TINY_TRAIN, *flags, "--json"]) == 0
    trained_with = read_model_bundle(out).config["train"]
    assert {key: trained_with[key] for key in expected} == expected
    assert json.loads(capsys.readouterr().out)["training"]["refitted_on_train"] == expected["refit"]


def test_cli_refuses_to_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, out = write_ratings(tmp_path / "data"), tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert main(["train", "--data", str(data), "--out", str(out), *TINY_TRAIN]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"
    assert main(["train", "--data", str(data), "--out", str(out), *TINY_TRAIN, "--force", "--json"]) == 0
    assert not (out / "keep.txt").exists() and (out / "manifest.json").is_file()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--model", "gcn"], "unknown model"),
        (["--epochs", "0"], "epochs must be a positive integer"),
        (["--dim", "0"], "dim must be a positive integer"),
        (["--lr", "-1"], "lr must be positive"),
        (["--batch-size", "0"], "batch-size must be a positive integer"),
    ],
)
def test_cli_bad_settings_fail_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    data, out = write_ratings(tmp_path / "data"), tmp_path / "bundle"
    assert main(["train", "--data", str(data), "--out", str(out), *arguments]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_cli_data_folder_without_ratings_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "b")]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "b").exists()


def test_cli_too_few_positives_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_ratings(tmp_path / "data")
    out = tmp_path / "bundle"
    assert main(["train", "--data", str(data), "--out", str(out), "--min-rating", "6"]) == 1
    assert "too few" in capsys.readouterr().err
    assert not out.exists()


def test_an_interrupted_write_leaves_no_half_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import movierec.bundle.model

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C after the vectors are staged, before the manifest

    monkeypatch.setattr(movierec.bundle.model, "write_manifest", interrupted)
    data, out = write_ratings(tmp_path / "data"), tmp_path / "bundle"
    assert main(["train", "--data", str(data), "--out", str(out), *TINY_TRAIN]) == 130
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".bundle")] == []


def test_cli_closing_lines_say_what_happened(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, out = write_ratings(tmp_path / "data"), tmp_path / "bundle"
    assert main(["train", "--data", str(data), "--out", str(out), *TINY_TRAIN]) == 0
    printed = capsys.readouterr()
    selection, refit, total = (
        line for line in printed.out.splitlines() if line.startswith(("selection:", "refit:", "total:"))
    )
    metrics = read_model_bundle(out).metrics["training"]
    assert f"{metrics['selection_epochs']} epochs on fit" in selection
    assert refit.startswith(f"refit: {metrics['refit_epochs']} more epochs on all of train")
    assert f"total: {metrics['epochs_run']} epochs" in total and "wall" in total and "peak RSS" in total
    assert metrics["epochs_run"] == metrics["selection_epochs"] + metrics["refit_epochs"] > metrics["selection_epochs"]
    assert printed.err == ""  # stderr is not a terminal here: no progress bars, no escape codes
    assert "-1.0000" not in printed.out


def test_cli_says_what_the_search_tried_and_the_bundle_records_its_choice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = write_ratings(tmp_path / "data"), tmp_path / "bundle"
    assert main(["train", "--data", str(data), "--out", str(out), *TINY_TRAIN, "--search-max-positives", "100000"]) == 0
    searched = [line for line in capsys.readouterr().out.splitlines() if line.startswith("search on validation")]
    bundle = read_model_bundle(out)
    trials = bundle.metrics["training"]["search"]
    assert len(searched) == 1 and searched[0].count(" epochs") == len(trials) == 1 + len(SEARCH_SPACE)
    best = max(trials, key=lambda trial: trial["best_valid_recall"])
    assert bundle.config["train"]["temperature"] == best["overrides"].get("temperature", 0.15)


def test_cli_refuses_a_missing_data_folder_before_importing_torch(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any import of torch now raises ImportError
        "from movierec.clients.cli.main import main\n"
        f"sys.exit(main(['train', '--data', {str(tmp_path / 'nope')!r}, '--out', {str(tmp_path / 'b')!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "no such file or folder" in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "b").exists()


def test_the_loss_axis_is_not_scaled_to_the_first_epochs() -> None:
    from movierec.trainer.plot import loss_axis_limits

    losses = [8.2, 6.0] + [5.0 - 0.01 * epoch for epoch in range(30)]
    low, high = loss_axis_limits(losses)
    assert low < min(losses) and 5.0 <= high < 5.2


def test_evaluate_runs_without_torch(tmp_path: Path) -> None:
    data, out = write_ratings(tmp_path / "data"), tmp_path / "bundle"
    assert main(["train", "--data", str(data), "--out", str(out), *TINY_TRAIN, "--json"]) == 0
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any import of torch now raises ImportError
        "from movierec.clients.cli.main import main\n"
        f"sys.exit(main(['evaluate', '--model', {str(out)!r}, '--json']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["users_evaluated"] > 0


def test_evaluate_reports_a_missing_bundle_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--model", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.ml1m
@pytest.mark.slow
def test_short_ml1m_run_beats_popularity(ml1m_dir: Path) -> None:
    from movierec.trainer.data import load_dataset
    from movierec.trainer.data.split import make_split
    from movierec.trainer.evaluate import evaluate_ranking

    split = make_split(load_dataset(ml1m_dir))
    popularity = np.bincount(split.fit.indices, minlength=split.n_items).astype(np.float32)
    popular = evaluate_ranking(
        lambda rows: np.broadcast_to(popularity, (rows.size, split.n_items)), split.fit, split.valid, ks=(20,)
    )
    # the fast recipe at 64 dimensions for 4 epochs: well under a minute on 2 cores (no time budget: a
    # loaded machine would cut it short)
    config = replace(resolve_config("fast"), dim=64, epochs=4, eval_every=2, refit=False)
    result = train_model(split, config, progress=False)
    assert result.best_valid_recall > popular["recall@20"] + 0.02


def test_model_specific_preset_settings_yield_to_explicit_ones() -> None:
    assert resolve_config("fast", search_max_positives=0, model="ngcf").dim == 64
    assert resolve_config("fast", search_max_positives=0, model="lightgcn").dim == resolve_config("fast").dim != 64
    assert resolve_config("fast", search_max_positives=0, model="ngcf", dim=32).dim == 32
