"""The synthetic MovieLens generator: exact sizes, valid ids, determinism, realistic skew, learnable taste."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from movierec.clients.cli.main import main
from movierec.errors import MovierecError
from movierec.trainer.data import load_dataset, make_split
from movierec.trainer.data.synth import FIRST_TIMESTAMP, GENRES, LAST_TIMESTAMP, allocate_counts, generate
from movierec.trainer.evaluate import evaluate_ranking

USERS, ITEMS, RATINGS = 1500, 400, 60_000


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("synth")
    generate(folder, users=USERS, items=ITEMS, ratings=RATINGS, seed=7, progress=False)
    return folder


def _digest(folder: Path) -> str:
    return hashlib.sha256((folder / "ratings.csv").read_bytes() + (folder / "movies.csv").read_bytes()).hexdigest()


def test_exact_count_unique_pairs_and_ids_in_range(synth_dir: Path) -> None:
    ds = load_dataset(synth_dir)
    r = ds.ratings
    assert ds.format == "ml-csv"
    assert len(r) == RATINGS
    assert np.unique(r.users * (ITEMS + 1) + r.items).shape[0] == RATINGS
    assert r.users.min() >= 1 and r.users.max() <= USERS
    assert r.items.min() >= 1 and r.items.max() <= ITEMS
    assert set(np.unique(r.ratings).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert np.unique(r.users).shape[0] == USERS  # every user rates something when ratings >= users
    assert r.timestamps.min() >= FIRST_TIMESTAMP and r.timestamps.max() <= LAST_TIMESTAMP
    assert np.unique(r.timestamps).shape[0] > 0.99 * RATINGS  # spread over time, not piled at one end


def test_file_is_sorted_by_user_then_movie_like_movielens(synth_dir: Path) -> None:
    r = load_dataset(synth_dir).ratings
    keys = r.users * (ITEMS + 1) + r.items
    assert np.all(np.diff(keys) > 0)


def test_movies_file_has_titles_years_and_genres(synth_dir: Path) -> None:
    movies = load_dataset(synth_dir).movies
    assert movies is not None
    assert movies.item_ids.tolist() == list(range(1, ITEMS + 1))
    assert all(year is not None and 1900 < year < 2100 for year in movies.years)
    assert all(title and "(" not in title for title in movies.titles)  # the year was split off the title
    assert any(title.endswith(", The") for title in movies.titles)  # a comma: the CSV quoting round-trips
    assert all(1 <= len(genres) <= 3 and set(genres) <= set(GENRES) for genres in movies.genres)
    assert len({tuple(g) for g in movies.genres}) > 10


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path, synth_dir: Path) -> None:
    again, other = tmp_path / "again", tmp_path / "other"
    generate(again, users=USERS, items=ITEMS, ratings=RATINGS, seed=7, progress=False)
    generate(other, users=USERS, items=ITEMS, ratings=RATINGS, seed=8, progress=False)
    assert _digest(again) == _digest(synth_dir)
    assert _digest(other) != _digest(synth_dir)


def test_activity_and_popularity_are_skewed(synth_dir: Path) -> None:
    r = load_dataset(synth_dir).ratings
    per_user = np.bincount(r.users)[1:]
    per_item = np.sort(np.bincount(r.items, minlength=ITEMS + 1)[1:])[::-1]
    assert per_user.max() > 5 * np.median(per_user)
    assert per_user.min() >= 20  # MovieLens' floor, since there are enough ratings for it
    assert per_item[: ITEMS // 10].sum() > 0.3 * RATINGS  # the top 10 % of movies hold over 30 % of ratings
    assert per_item[-ITEMS // 2 :].sum() < 0.2 * RATINGS


def _popularity_and_ease_recall(folder: Path) -> tuple[float, float]:
    split = make_split(load_dataset(folder), seed=1)
    rows, cols = split.train.to_pairs()
    interactions = np.zeros((split.n_users, split.n_items), dtype=np.float64)
    interactions[rows, cols] = 1.0
    popularity = interactions.sum(axis=0)
    gram = interactions.T @ interactions + 100.0 * np.eye(split.n_items)
    inverse = np.linalg.inv(gram)
    weights = -inverse / np.diag(inverse)
    np.fill_diagonal(weights, 0.0)

    def by_popularity(users: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        return np.tile(popularity, (users.shape[0], 1)).astype(np.float32)

    def by_ease(users: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        return (interactions[users] @ weights).astype(np.float32)

    pop = evaluate_ranking(by_popularity, split.train, split.test, ks=(20,))["recall@20"]
    ease = evaluate_ranking(by_ease, split.train, split.test, ks=(20,))["recall@20"]
    return pop, ease


def test_a_taste_model_beats_popularity(synth_dir: Path) -> None:
    pop, ease = _popularity_and_ease_recall(synth_dir)
    assert ease > 1.2 * pop, (pop, ease)  # seeds 1, 2, 7: 1.23x, 1.38x, 1.36x


def test_without_taste_the_lead_disappears(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The control for the test above: with affinity zeroed, picks and stars carry no taste to learn.
    import movierec.trainer.data.synth as synth

    monkeypatch.setattr(synth, "_affinity", lambda world, users, items: np.zeros(users.shape[0], np.float32))
    monkeypatch.setattr(synth, "TASTE", 0.0)
    generate(tmp_path, users=USERS, items=ITEMS, ratings=RATINGS, seed=7, progress=False)
    pop, ease = _popularity_and_ease_recall(tmp_path)
    assert ease < pop, (pop, ease)  # seeds 1, 7: 0.84x, 0.83x


def test_dense_requests_use_the_whole_catalogue(tmp_path: Path) -> None:
    # 50 users x 40 movies, 1,900 of 2,000 cells: every user goes through the full-scan path.
    generate(tmp_path, users=50, items=40, ratings=1900, seed=3, progress=False)
    r = load_dataset(tmp_path).ratings
    assert len(r) == 1900
    assert np.unique(r.users * 41 + r.items).shape[0] == 1900


def test_fewer_ratings_than_users(tmp_path: Path) -> None:
    generate(tmp_path, users=300, items=50, ratings=120, seed=3, progress=False)
    r = load_dataset(tmp_path).ratings
    assert len(r) == 120 and r.users.max() <= 300


@pytest.mark.parametrize("floor,cap,total", [(0, 5, 0), (2, 9, 37), (1, 3, 30), (0, 100, 55)])
def test_allocate_counts_is_exact_and_bounded(floor: int, cap: int, total: int) -> None:
    weights = np.random.default_rng(0).pareto(1.5, 10)
    counts = allocate_counts(weights, total, floor=floor, cap=cap)
    assert counts.sum() == total
    assert counts.min() >= floor and counts.max() <= cap
    heaviest, lightest = int(np.argmax(weights)), int(np.argmin(weights))
    assert counts[heaviest] >= counts[lightest]


def test_impossible_requests_are_refused(tmp_path: Path) -> None:
    with pytest.raises(MovierecError, match="more than --users x --items"):
        generate(tmp_path, users=3, items=4, ratings=13)
    with pytest.raises(MovierecError, match="--users must be a positive"):
        generate(tmp_path, users=0, items=4, ratings=1)
    with pytest.raises(MovierecError, match="--ratings must be a positive"):
        generate(tmp_path, users=2, items=4, ratings=-1)
    assert not (tmp_path / "ratings.csv").exists()


def test_cli_writes_loads_and_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "synthetic"
    args = ["data", "synth", "--users", "200", "--items", "80", "--ratings", "3000", "--out", str(out), "--seed", "5"]
    assert main(args) == 0
    assert "3,000 ratings" in capsys.readouterr().out
    before = _digest(out)
    assert main(args) == 1
    assert "--force" in capsys.readouterr().err
    assert _digest(out) == before  # nothing already stored is lost
    assert main([*args, "--force", "--json"]) == 0
    assert '"ratings": 3000' in capsys.readouterr().out
    assert main(["data", "stats", "--data", str(out), "--json"]) == 0
    assert '"ratings": 3000' in capsys.readouterr().out


def test_an_unwritable_destination_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    sizes = ["--users", "5", "--items", "4", "--ratings", "10"]
    assert main(["data", "synth", *sizes, "--out", str(blocker / "below")]) == 1
    assert main(["data", "synth", *sizes, "--out", str(blocker)]) == 1
    err = capsys.readouterr().err
    assert "cannot create the folder" in err and "exists and is not a folder" in err and "Traceback" not in err
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize(
    "sizes,message",
    [
        (["--users", "3", "--items", "4", "--ratings", "13"], "more than --users x --items"),
        (["--users", "0", "--items", "4", "--ratings", "1"], "--users must be a positive"),
        (["--users", "2", "--items", "4", "--ratings", "1", "--seed", "-1"], "--seed must be 0 or more"),
    ],
)
def test_cli_rejects_impossible_sizes_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sizes: list[str], message: str
) -> None:
    assert main(["data", "synth", *sizes, "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
