"""Bad input: each case is one DataError naming the file, and the line where there is one."""

from __future__ import annotations

from pathlib import Path

import pytest

from movierec.errors import DataError
from movierec.trainer.data import load_dataset

GOOD_DAT = "1::10::5::100\n1::20::3::101\n2::10::4::102\n"


def load_error(path: Path, fmt: str | None = None) -> DataError:
    with pytest.raises(DataError) as err:
        load_dataset(path, fmt)
    return err.value


def dat_error(tmp_path: Path, ratings: str | bytes) -> DataError:
    target = tmp_path / "ratings.dat"
    if isinstance(ratings, bytes):
        target.write_bytes(ratings)
    else:
        target.write_text(ratings)
    err = load_error(tmp_path)
    assert err.path == target
    assert str(target) in str(err)
    return err


def test_missing_folder(tmp_path: Path) -> None:
    err = load_error(tmp_path / "nope")
    assert err.path == tmp_path / "nope" and "no such file" in str(err)


def test_folder_without_any_ratings_file(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("hello")
    err = load_error(tmp_path)
    assert err.path == tmp_path and "no ratings file found" in str(err)


def test_forced_format_whose_file_is_missing(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1\t2\t3\t4\n")
    err = load_error(tmp_path, "ml-dat")
    assert "ratings.dat not found" in str(err)


def test_unknown_format_name(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text(GOOD_DAT)
    assert "unknown format 'parquet'" in str(load_error(tmp_path, "parquet"))


def test_wrong_separator_in_dat(tmp_path: Path) -> None:
    err = dat_error(tmp_path, GOOD_DAT.replace("::", "\t"))
    assert err.line == 1 and "wrong separator" in str(err) and "'::'" in str(err)


def test_single_colon_is_not_accepted_as_the_dat_separator(tmp_path: Path) -> None:
    err = dat_error(tmp_path, GOOD_DAT.replace("::", ":"))
    assert err.line == 1 and "found 1" in str(err)


def test_extra_field_on_a_later_line(tmp_path: Path) -> None:
    err = dat_error(tmp_path, GOOD_DAT + "3::10::4::103::9\n")
    assert err.line == 4 and "expected 4 fields" in str(err) and "found 5" in str(err)


def test_missing_field_on_a_later_line(tmp_path: Path) -> None:
    err = dat_error(tmp_path, GOOD_DAT + "3::10::4\n")
    assert err.line == 4 and "timestamp" in str(err)


@pytest.mark.parametrize(
    ("bad_line", "what"),
    [
        ("x::10::4::103", "user id"),
        ("3::ten::4::103", "item id"),
        ("3::10::four::103", "rating"),
        ("3::10::4::soon", "timestamp"),
    ],
)
def test_non_numeric_field(tmp_path: Path, bad_line: str, what: str) -> None:
    err = dat_error(tmp_path, GOOD_DAT + bad_line + "\n")
    assert err.line == 4 and what in str(err) and "not a number" in str(err)


def test_fractional_id(tmp_path: Path) -> None:
    err = dat_error(tmp_path, GOOD_DAT + "3::10.5::4::103\n")
    assert err.line == 4 and "item id must be a whole number" in str(err)


@pytest.mark.parametrize("rating", ["-1", "11", "10.5", "inf"])
def test_rating_out_of_range(tmp_path: Path, rating: str) -> None:
    err = dat_error(tmp_path, f"3::10::{rating}::103\n" + GOOD_DAT)
    assert err.line == 1 and f"rating must be a number in [0, 10], got '{rating}'" in str(err)


@pytest.mark.parametrize(("rating", "message"), [("NaN", "rating is not a number: 'NaN'"), ("", "rating is missing")])
def test_rating_nan_or_empty(tmp_path: Path, rating: str, message: str) -> None:
    err = dat_error(tmp_path, GOOD_DAT + f"3::10::{rating}::103\n")
    assert err.line == 4 and message in str(err)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_ratings_file(tmp_path: Path, content: str) -> None:
    assert "empty" in str(dat_error(tmp_path, content))


def test_header_only_csv_has_no_rows(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    assert "no rows" in str(load_error(tmp_path))


def test_duplicate_user_item_rows(tmp_path: Path) -> None:
    err = dat_error(tmp_path, GOOD_DAT + "2::20::1::200\n1::10::2::300\n")
    assert err.line == 5
    assert "duplicate rating for user 1 and item 10 (first given on line 1)" in str(err)


def test_undecodable_utf8_in_a_csv(tmp_path: Path) -> None:
    target = tmp_path / "ratings.csv"
    target.write_bytes(b"userId,movieId,rating,timestamp\n1,10,4,100\n2,\xff\xfe,4,101\n")
    err = load_error(tmp_path)
    assert err.path == target and err.line == 3 and "not valid utf-8" in str(err)


def test_movielens_csv_with_a_foreign_header(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text("userId;movieId;rating;timestamp\n1;10;4;100\n")
    err = load_error(tmp_path, "ml-csv")
    assert err.line == 1 and "expected the header userId,movieId,rating,timestamp" in str(err)


def test_table_without_a_known_delimiter(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("user item rating\n1 2 3\n")
    err = load_error(tmp_path / "t.csv")
    assert err.line == 1 and "cannot tell the delimiter" in str(err)


def test_table_mapping_names_a_missing_column(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("user,item,rating\n1,2,3\n")
    with pytest.raises(DataError, match="column 'stars' \\(for rating\\) is not in the header"):
        load_dataset(tmp_path / "t.csv", columns={"rating": "stars"})


def test_folder_with_two_candidate_tables(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("user,item,rating\n1,2,3\n")
    (tmp_path / "b.csv").write_text("user,item,rating\n1,2,3\n")
    assert "found a.csv, b.csv" in str(load_error(tmp_path))


def write_good_dat(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text(GOOD_DAT)


@pytest.mark.parametrize(
    ("file_name", "content", "line", "message"),
    [
        (
            "movies.dat",
            "10::Heat (1995)::Action\n20 Jumanji (1995) Adventure\n",
            2,
            "expected 'MovieID::Title::Genres'",
        ),
        (
            "movies.dat",
            "10::Heat (1995)::Action\nten::Jumanji (1995)::Adventure\n",
            2,
            "movie id is not a whole number",
        ),
        ("movies.dat", "10::Heat (1995)::Action\n\n10::Heat again::Action\n", 3, "movie id 10 already given on line 1"),
    ],
)
def test_broken_dat_metadata_line(tmp_path: Path, file_name: str, content: str, line: int, message: str) -> None:
    write_good_dat(tmp_path)
    (tmp_path / file_name).write_text(content)
    err = load_error(tmp_path)
    assert err.path == tmp_path / file_name and err.line == line and message in str(err)


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        (b'movieId,title,genres\n10,"Heat (1995)",Action\n20,"Unclosed, title,Drama\n', 3, "malformed CSV"),
        (b"movieId,title,genres\n10,Heat (1995),Action,Extra\n", 2, "expected 3 fields, found 4"),
        (b"movieId,title,genres\n10,Caf\xe9 (1995),Action\n", 2, "not valid utf-8"),
        (b"id,name,genres\n10,Heat,Action\n", 1, "expected the header"),
    ],
)
def test_broken_csv_metadata(tmp_path: Path, content: bytes, line: int, message: str) -> None:
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4,100\n")
    (tmp_path / "movies.csv").write_bytes(content)
    err = load_error(tmp_path)
    assert err.path == tmp_path / "movies.csv" and err.line == line and message in str(err)


def test_broken_100k_item_line(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1\t10\t4\t100\n")
    flags = "|".join(["0"] * 19)
    (tmp_path / "u.item").write_text(f"10|Heat (1995)|01-Jan-1995||url|{flags}\n20|Short|line\n")
    err = load_error(tmp_path)
    assert err.path == tmp_path / "u.item" and err.line == 2 and "expected 24 '|'-separated fields, found 3" in str(err)


def test_broken_100k_genre_line(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1\t10\t4\t100\n")
    (tmp_path / "u.genre").write_text("unknown|0\nAction\n")
    err = load_error(tmp_path)
    assert err.path == tmp_path / "u.genre" and err.line == 2 and "expected 'Genre|index'" in str(err)


def one_line(err: DataError) -> str:
    message = str(err)
    assert "\n" not in message and len(message) < 400, message
    return message


@pytest.mark.parametrize(
    ("bad_line", "what", "message"),
    [
        ("1e30::20::3::101", "user id", "too large to be exact"),
        ("1::1e30::3::101", "item id", "too large to be exact"),
        ("9.3e18::20::3::101", "user id", "too large to be exact"),  # inside int64, but not exact as a float
        ("1::20::3::1e30", "timestamp", "too large to be exact"),
        ("1::99999999999999999999::3::101", "item id", "beyond the 64-bit integer range: '99999999999999999999'"),
        ("-99999999999999999999::20::3::101", "user id", "beyond the 64-bit integer range"),
        ("1::9223372036854775808::3::101", "item id", "beyond the 64-bit integer range"),
        ("1::" + "9" * 5000 + "::3::101", "item id", "beyond the 64-bit integer range"),
        ("١::20::3::101", "user id", "not a number: '١'"),
        ("1::２０::3::101", "item id", "not a number: '２０'"),
    ],
)
def test_ids_beyond_int64_or_in_other_scripts_name_their_line(
    tmp_path: Path, bad_line: str, what: str, message: str
) -> None:
    err = dat_error(tmp_path, GOOD_DAT + bad_line + "\n")
    assert err.line == 4 and f"{what}" in str(err) and message in one_line(err)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("1e30,20,3", "user id '1e+30' is too large to be exact"),
        ("1,99999999999999999999,3", "item id is beyond the 64-bit integer range"),
        ("1,20,nan", "rating is not a number"),
        ("1,20,-inf", "rating must be a number in [0, 10], got '-inf'"),
    ],
)
def test_generic_table_refuses_the_same_values(tmp_path: Path, row: str, message: str) -> None:
    table = tmp_path / "mine.csv"
    table.write_text(f"user,item,rating\n1,10,4\n{row}\n")
    err = load_error(table)
    assert err.path == table and err.line == 3 and message in one_line(err)


def test_negative_ids_still_load(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text("-1::-10::5::100\n2::10::4::101\n")
    ratings = load_dataset(tmp_path).ratings
    assert ratings.users.tolist() == [-1, 2] and ratings.items.tolist() == [-10, 10]


def test_a_whole_float_column_inside_2_pow_53_still_loads(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text("1.0::10::5::100\n9007199254740992::20::4::101\n")
    assert load_dataset(tmp_path).ratings.users.tolist() == [1, 2**53]


@pytest.mark.parametrize(
    ("file_name", "content", "message"),
    [
        ("movies.dat", "99999999999999999999999::Heat (1995)::Action\n", "beyond the 64-bit integer range"),
        ("movies.dat", "9223372036854775808::Heat (1995)::Action\n", "beyond the 64-bit integer range"),
        ("movies.dat", "9" * 5000 + "::Heat (1995)::Action\n", "beyond the 64-bit integer range: '99999"),
        ("movies.dat", "١٠::Heat (1995)::Action\n", "movie id is not a whole number: '١٠'"),
        ("movies.dat", "１０::Heat (1995)::Action\n", "movie id is not a whole number"),
        ("movies.dat", "1_0::Heat (1995)::Action\n", "movie id is not a whole number: '1_0'"),
        ("movies.csv", "movieId,title,genres\n99999999999999999999,Heat (1995),Action\n", "beyond the 64-bit"),
        ("u.genre", "unknown|0\nAction|²\n", "expected 'Genre|index'"),
        ("u.genre", "unknown|0\nAction|１\n", "expected 'Genre|index'"),
    ],
)
def test_metadata_ids_beyond_int64_or_in_other_scripts_name_their_line(
    tmp_path: Path, file_name: str, content: str, message: str
) -> None:
    ratings = {
        "movies.dat": ("ratings.dat", GOOD_DAT),
        "movies.csv": ("ratings.csv", "userId,movieId,rating,timestamp\n1,10,4,100\n"),
        "u.genre": ("u.data", "1\t10\t4\t100\n"),
    }
    ratings_name, ratings_text = ratings[file_name]
    (tmp_path / ratings_name).write_text(ratings_text)
    (tmp_path / file_name).write_text(content)
    err = load_error(tmp_path)
    assert err.path == tmp_path / file_name and err.line == content.count("\n") and message in one_line(err)


@pytest.mark.parametrize("year", ["١٩٩٥", "１９９５", "¹⁹⁹⁵", "۱۳۷۴"])
def test_a_year_in_other_digits_stays_in_the_title_and_is_unknown(tmp_path: Path, year: str) -> None:
    write_good_dat(tmp_path)
    (tmp_path / "movies.dat").write_text(f"10::Heat ({year})::Action\n20::Jumanji (1995)::Adventure\n")
    movies = load_dataset(tmp_path).movies
    assert movies is not None
    assert movies.titles == [f"Heat ({year})", "Jumanji"] and movies.years == [None, 1995]


def test_u_item_release_year_in_other_digits_is_unknown(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1\t10\t4\t100\n")
    flags = "|".join(["0"] * 19)
    (tmp_path / "u.item").write_text(f"10|Heat|01-Jan-１９９５||url|{flags}\n")
    movies = load_dataset(tmp_path).movies
    assert movies is not None and movies.titles == ["Heat"] and movies.years == [None]


def test_a_column_of_booleans_is_not_a_number(tmp_path: Path) -> None:
    table = tmp_path / "mine.csv"
    table.write_text("user,item,rating\nTrue,10,4\nFalse,20,3\n")
    err = load_error(table)
    assert err.line == 2 and "user id is not a number: 'True'" in one_line(err)


def test_a_latin1_ellipsis_in_a_title_neither_splits_the_line_nor_shifts_line_numbers(tmp_path: Path) -> None:
    write_good_dat(tmp_path)
    (tmp_path / "movies.dat").write_bytes(b"10::Wait\x85 for it (1995)::Drama\n20::Heat (1995)::Action\nthirty::X::Y\n")
    err = load_error(tmp_path)
    assert err.path == tmp_path / "movies.dat" and err.line == 3 and "movie id is not a whole number" in str(err)
    (tmp_path / "movies.dat").write_bytes(b"10::Wait\x85 for it (1995)::Drama\r\n20::Heat (1995)::Action\r\n")
    movies = load_dataset(tmp_path).movies
    assert movies is not None and movies.titles == ["Wait\x85 for it", "Heat"] and movies.years == [1995, 1995]
