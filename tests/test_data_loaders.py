"""Every supported format loads the same tiny dataset the same way; statistics and metadata follow."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from movierec.errors import DataError
from movierec.trainer.data import dataset_stats, detect_format, item_metadata, load_dataset

# The same five ratings in every format: (user, item, rating, timestamp).
ROWS = [(1, 10, 5.0, 100), (1, 20, 3.0, 101), (2, 10, 4.0, 102), (2, 30, 1.0, 103), (3, 20, 4.0, 104)]


def write_dat(folder: Path, with_movies: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text("".join(f"{u}::{i}::{r:g}::{t}\n" for u, i, r, t in ROWS))
    if with_movies:
        movies = (
            "10::Heat (1995)::Action|Crime|Thriller\n"
            "20::City of Lost Children, The (Cité des enfants perdus, La) (1995)::Adventure|Sci-Fi\n"
            "30::Odd::Title (1999)::Drama\n"
            "40::Never Rated (2001)::Comedy\n"
        )
        (folder / "movies.dat").write_bytes(movies.encode("latin-1"))
    return folder


def write_100k(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{int(r)}\t{t}\n" for u, i, r, t in ROWS))
    flags = ["0"] * 19
    heat = flags.copy()
    heat[1] = heat[6] = "1"  # Action, Crime
    (folder / "u.item").write_bytes(
        (
            "10|Heat (1995)|01-Jan-1995||http://x|" + "|".join(heat) + "\n"
            "20|Café Society|05-May-1998||http://y|" + "|".join(flags) + "\n"
        ).encode("latin-1")
    )
    return folder


def write_csv(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r:.1f},{t}\n" for u, i, r, t in ROWS)
    )
    (folder / "movies.csv").write_text(
        'movieId,title,genres\n10,"American President, The (1995)",Comedy|Drama\n'
        "20,Nothing (2000),(no genres listed)\n",
        encoding="utf-8",
    )
    return folder


def write_table(path: Path, delimiter: str, header: tuple[str, str, str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [delimiter.join(header)] + [delimiter.join(str(v) for v in row) for row in ROWS]
    path.write_text("\n".join(lines) + "\n")
    return path


def assert_rows(path: Path, fmt: str | None = None) -> None:
    ds = load_dataset(path, fmt)
    r = ds.ratings
    assert len(r) == len(ROWS)
    assert r.users.tolist() == [row[0] for row in ROWS]
    assert r.items.tolist() == [row[1] for row in ROWS]
    assert r.ratings.tolist() == [row[2] for row in ROWS]
    assert r.timestamps.tolist() == [row[3] for row in ROWS]
    assert r.users.dtype == np.int64 and r.ratings.dtype == np.float32 and r.timestamps.dtype == np.int64


@pytest.mark.parametrize(
    ("writer", "fmt"),
    [(write_dat, "ml-dat"), (write_100k, "ml-100k"), (write_csv, "ml-csv")],
)
def test_each_movielens_format_is_detected_and_loads_the_same_rows(
    tmp_path: Path, writer: Callable[[Path], Path], fmt: str
) -> None:
    folder = writer(tmp_path / "data")
    assert detect_format(folder) == fmt
    assert_rows(folder)
    assert load_dataset(folder).format == fmt


@pytest.mark.parametrize(
    ("delimiter", "header"),
    [
        (",", ("user", "item", "rating", "timestamp")),
        ("\t", ("user_id", "movie_id", "score", "time")),
        (";", ("userId", "movieId", "rating", "ts")),
        ("|", ("UserID", "ItemID", "Stars", "Timestamp")),
    ],
)
def test_generic_table_sniffs_delimiter_and_column_aliases(
    tmp_path: Path, delimiter: str, header: tuple[str, str, str, str]
) -> None:
    table = write_table(tmp_path / "interactions.tsv", delimiter, header)
    assert detect_format(table) == "table"
    assert_rows(table)
    assert_rows(tmp_path)  # the folder holding the single table works too


def test_generic_table_with_explicit_column_mapping(tmp_path: Path) -> None:
    table = write_table(tmp_path / "x.csv", ",", ("who", "what", "stars_given", "when"))
    with pytest.raises(DataError, match="no user/item/rating column"):
        load_dataset(table)
    ds = load_dataset(table, columns={"user": "who", "item": "what", "rating": "stars_given", "timestamp": "when"})
    assert ds.format == "table"
    assert ds.ratings.users.tolist() == [row[0] for row in ROWS]
    assert ds.ratings.timestamps.tolist() == [row[3] for row in ROWS]


def test_table_without_time_column_has_no_timestamps(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("user,item,rating\n1,2,4\n1,3,5\n")
    ds = load_dataset(table)
    assert not ds.has_timestamps
    stats = dataset_stats(ds)
    assert stats["first_timestamp"] is None and stats["last_timestamp"] is None


def test_table_dates_become_unix_seconds(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("user,item,rating,date\n1,2,4,1970-01-02\n1,3,5,2001-09-09T01:46:40Z\n")
    assert load_dataset(table).ratings.timestamps.tolist() == [86400, 1_000_000_000]


def test_explicit_format_overrides_detection(tmp_path: Path) -> None:
    folder = write_csv(tmp_path / "data")
    assert_rows(folder / "ratings.csv", "table")
    assert load_dataset(folder, "table").movies is None


def test_ratings_file_path_loads_its_folder_metadata(tmp_path: Path) -> None:
    folder = write_dat(tmp_path / "ml-1m")
    ds = load_dataset(folder / "ratings.dat")
    assert ds.name == "ml-1m" and ds.movies is not None


def test_dat_movies_titles_years_genres_from_latin1(tmp_path: Path) -> None:
    ds = load_dataset(write_dat(tmp_path / "d"))
    assert ds.movies is not None
    assert ds.movies.item_ids.tolist() == [10, 20, 30, 40]
    assert ds.movies.titles == [
        "Heat",
        "City of Lost Children, The (Cité des enfants perdus, La)",
        "Odd::Title",
        "Never Rated",
    ]
    assert ds.movies.years == [1995, 1995, 1999, 2001]
    assert ds.movies.genres[0] == ["Action", "Crime", "Thriller"]


def test_100k_items_use_genre_flags_and_release_year(tmp_path: Path) -> None:
    ds = load_dataset(write_100k(tmp_path / "ml-100k"))
    assert ds.movies is not None
    assert ds.movies.titles == ["Heat", "Café Society"]
    assert ds.movies.years == [1995, 1998]  # the second from the release date: its title has no year
    assert ds.movies.genres == [["Action", "Crime"], []]


def test_100k_genre_names_come_from_u_genre(tmp_path: Path) -> None:
    folder = write_100k(tmp_path / "ml-100k")
    names = [f"g{i}" for i in range(19)]
    (folder / "u.genre").write_text("".join(f"{n}|{i}\n" for i, n in enumerate(names)))
    ds = load_dataset(folder)
    assert ds.movies is not None and ds.movies.genres[0] == ["g1", "g6"]


def test_csv_movies_keep_quoted_commas_and_drop_no_genres(tmp_path: Path) -> None:
    ds = load_dataset(write_csv(tmp_path / "ml-latest-small"))
    assert ds.name == "ml-latest-small"
    assert ds.movies is not None
    assert ds.movies.titles == ["American President, The", "Nothing"]
    assert ds.movies.genres == [["Comedy", "Drama"], []]


def test_stats_on_each_format_agree(tmp_path: Path) -> None:
    folders = [write_dat(tmp_path / "a"), write_100k(tmp_path / "b"), write_csv(tmp_path / "c")]
    stats = [dataset_stats(load_dataset(f)) for f in folders]
    for s in stats:
        assert (s["ratings"], s["users"], s["items"], s["positives"]) == (5, 3, 3, 3)
        assert s["rating_histogram"] == {"1": 1, "3": 1, "4": 2, "5": 1}
        assert (s["first_timestamp"], s["last_timestamp"]) == (100, 104)
    assert [s["movies"] for s in stats] == [4, 2, 2]
    assert dataset_stats(load_dataset(folders[0]), min_rating=3.0)["positives"] == 4


def test_half_star_ratings_in_histogram(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,3.5,1\n1,2,0.5,2\n2,1,3.5,3\n")
    assert dataset_stats(load_dataset(tmp_path))["rating_histogram"] == {"0.5": 1, "3.5": 2}


def test_checksum_is_sha256_of_the_ratings_file(tmp_path: Path) -> None:
    import hashlib

    folder = write_dat(tmp_path / "d")
    assert load_dataset(folder).checksum == hashlib.sha256((folder / "ratings.dat").read_bytes()).hexdigest()


def test_item_metadata_aligns_and_fills_unknown(tmp_path: Path) -> None:
    ds = load_dataset(write_dat(tmp_path / "d"))
    meta = item_metadata(ds, np.array([40, 99, 10], dtype=np.int64))
    assert meta.titles == ["Never Rated", "item 99", "Heat"]
    assert meta.years == [2001, None, 1995]
    assert meta.genres == [["Comedy"], [], ["Action", "Crime", "Thriller"]]
    bare = load_dataset(write_dat(tmp_path / "e", with_movies=False))
    assert item_metadata(bare, np.array([10], dtype=np.int64)).titles == ["item 10"]


def test_blank_lines_are_skipped_and_line_numbers_stay_true(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text("1::10::5::100\n\n1::11::4::101\n\n1::12::x::102\n")
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path)
    assert err.value.line == 5
    (tmp_path / "ratings.dat").write_text("1::10::5::100\n\n1::11::4::101\n\n")
    assert len(load_dataset(tmp_path).ratings) == 2


def test_crlf_line_ends_and_byte_order_mark(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_bytes(
        b"\xef\xbb\xbfuserId,movieId,rating,timestamp\r\n1,10,4,100\r\n2,10,3.5,101\r\n"
    )
    (tmp_path / "movies.csv").write_bytes(b"\xef\xbb\xbfmovieId,title,genres\r\n10,Heat (1995),Action\r\n")
    ds = load_dataset(tmp_path)
    assert ds.format == "ml-csv"
    assert ds.ratings.timestamps.tolist() == [100, 101]
    assert ds.movies is not None and ds.movies.titles == ["Heat"]


def test_ml10m_style_dat_half_stars_and_utf8_titles(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text("1::10::3.5::100\n2::10::0.5::101\n")
    (tmp_path / "movies.dat").write_text("10::Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)::Comedy|Romance\n")
    ds = load_dataset(tmp_path)
    assert ds.ratings.ratings.tolist() == [3.5, 0.5]
    assert ds.movies is not None
    assert ds.movies.titles == ["Amélie (Fabuleux destin d'Amélie Poulain, Le)"] and ds.movies.years == [2001]
