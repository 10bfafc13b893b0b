"""GraphSAGE: users.dat parsing, the neighbour sampler, the numpy item tower, `recctl train --model graphsage`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from movierec.bundle import read_model_bundle
from movierec.bundle.csr import CSR
from movierec.clients.cli.main import main
from movierec.errors import DataError
from movierec.item_features import ItemEncoder, read_item_feature_model
from movierec.trainer.data.users import read_users
from movierec.trainer.models.graph import bipartite_edge_index
from movierec.trainer.models.graphsage import GraphSAGE
from movierec.trainer.neighbours import NeighbourSampler

GENRES = ("Action", "Comedy", "Drama", "Horror")


def write_taste_data(folder: Path, n_users: int = 48, per_genre: int = 8, seed: int = 0) -> Path:
    """ML-1M-style folder: user u likes (rates 5) most movies of genre u % 4, and a few others lowly."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    movies = [(m + 1, GENRES[m % 4]) for m in range(per_genre * 4)]
    (folder / "movies.dat").write_text(
        "".join(f"{mid}::Movie {mid} ({1990 + mid % 10})::{genre}\n" for mid, genre in movies)
    )
    (folder / "users.dat").write_text(
        "".join(f"{u}::{'MF'[u % 2]}::{18 + u % 3}::{u % 5}::00000\n" for u in range(1, n_users + 1))
    )
    lines: list[str] = []
    for user in range(1, n_users + 1):
        liked = [mid for mid, genre in movies if genre == GENRES[user % 4]]
        for mid in rng.choice(liked, size=len(liked) - 1, replace=False):
            lines.append(f"{user}::{mid}::5::{978300000 + len(lines)}\n")
        for mid in rng.choice([m for m, _ in movies if m not in liked], size=2, replace=False):
            lines.append(f"{user}::{mid}::2::{978300000 + len(lines)}\n")
    (folder / "ratings.dat").write_text("".join(lines))
    return folder


def test_users_dat_parsed_and_bad_lines_named(tmp_path: Path) -> None:
    good = tmp_path / "users.dat"
    good.write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    users = read_users(good)
    assert users.user_ids.tolist() == [1, 2] and users.attributes["occupation"] == ["10", "16"]
    item_file = tmp_path / "u.user"
    item_file.write_text("7|24|M|technician|85711\n")
    assert read_users(item_file).attributes == {"gender": ["M"], "age": ["24"], "occupation": ["technician"]}
    for text, message in (
        ("1::F::1::10::48067\n2::M::56\n", "users.dat:2: expected 5"),
        ("1::F::1::10::1\n1::M::2::3::4\n", "users.dat:2: user id 1 already given on line 1"),
        ("x::F::1::10::1\n", "users.dat:1: user id is not a whole number"),
    ):
        good.write_text(text)
        with pytest.raises(DataError, match=message):
            read_users(good)


def test_sampler_respects_fanout_hidden_nodes_and_edges() -> None:
    # 3 users, 4 items; user 0 rated all 4, users 1 and 2 rated item 0 only.
    positives = CSR.from_pairs([0, 0, 0, 0, 1, 2], [0, 1, 2, 3, 0, 0], 3, 4)
    sampler = NeighbourSampler(positives, fanouts=(2, 10))
    generator = torch.Generator().manual_seed(0)
    n_id, edges = sampler.sample(torch.tensor([0, 3]), generator)
    assert n_id[:2].tolist() == [0, 3] and len(set(n_id.tolist())) == n_id.shape[0]
    real = {tuple(edge) for edge in bipartite_edge_index(positives).T.tolist()}
    for source, target in edges.T.tolist():
        assert (int(n_id[target]), int(n_id[source])) in real  # every sampled edge exists in the graph
    hop1_into_user0 = [s for s, t in edges.T.tolist() if t == 0]
    assert len(hop1_into_user0) == 2  # user 0 has 4 neighbours, fanout 2
    hidden = torch.zeros(7, dtype=torch.bool)
    hidden[3] = True  # item 0 (node 3) hidden: nothing flows into it
    _, edges = sampler.sample(torch.tensor([3]), generator, hidden)
    assert edges.shape[1] == 0


def test_numpy_item_tower_reproduces_the_model_for_a_movie_without_neighbours() -> None:
    torch.manual_seed(0)
    encoder = ItemEncoder.fit([["Action"], ["Drama", "Comedy"]], [1990, None])
    items = torch.from_numpy(encoder.encode([["Action"], ["Drama", "Comedy"], ["Horror"]], [1990, None, 2001]))
    model = GraphSAGE(2, torch.rand(2, 3), items, dim=8, layers=2)
    no_edges = torch.zeros((2, 0), dtype=torch.int64)
    expected = model(torch.arange(2, 5), no_edges).detach().numpy()
    tower = model.item_tower()
    np.testing.assert_allclose(tower(items.numpy()), expected, rtol=1e-5, atol=1e-6)
    assert encoder.encode([["Horror"]], [None])[0].tolist() == [0, 0, 0, 0, 1]  # unknown genre ignored, year flag


def test_recctl_train_graphsage_writes_a_servable_bundle_with_its_tower(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_taste_data(tmp_path / "data")
    out = tmp_path / "bundle"
    code = main(["train", "--model", "graphsage", "--data", str(data), "--out", str(out), "--epochs", "15",
                 "--dim", "16", "--batch-size", "64", "--json"])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["recall@20"] > 0.5  # 8 movies per taste: a model that learned tastes finds them
    bundle = read_model_bundle(out)
    assert bundle.config["train"]["model"] == "graphsage"
    assert any(column.startswith("occupation=") for column in bundle.config["user_features"])
    assert bundle.manifest is not None
    features = read_item_feature_model(out, bundle.manifest, bundle.dim)
    assert features is not None and features.source == "graphsage"
    # A new Horror movie lands nearest the users who like Horror (user ids with u % 4 == 3).
    vector = features.vectors([["Horror"]], [1995])[0]
    scores = bundle.user_vectors @ vector
    horror = np.array([user_id % 4 == 3 for user_id in bundle.user_ids.tolist()])
    assert scores[horror].mean() > scores[~horror].mean()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--loss", "bpr"], "graphsage does not take --loss"),
        (["--preset", "paper"], "graphsage does not take --preset"),
        (["--layers", "0"], "graphsage needs >= 1 layer"),
    ],
)
def test_recctl_train_graphsage_refuses_settings_it_does_not_have(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    data = write_taste_data(tmp_path / "data", n_users=4, per_genre=2)
    assert main(["train", "--model", "graphsage", "--data", str(data), "--out", str(tmp_path / "b"), *flags]) != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
