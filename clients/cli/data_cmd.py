"""``recctl data stats | split | download``: inspect, split and fetch MovieLens data.

The data layer (pandas) is imported inside the handlers, so other commands
never pay for it.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from movierec.clients.cli.help import data_default_help
from movierec.clients.cli.output import print_json, print_table
from movierec.errors import MovierecError
from movierec.paths import default_ml1m_dir

FORMAT_HELP = "ml-dat (ML-1M/10M .dat), ml-100k, ml-csv (MovieLens CSV) or table (generic CSV/TSV); default: detect"


def register(commands: Any) -> None:
    parser = commands.add_parser("data", help="inspect, split and download MovieLens data")
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True

    stats = actions.add_parser("stats", help="counts, rating histogram and time range of a dataset")
    _add_data_options(stats)
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    stats.set_defaults(func=_stats)

    split = actions.add_parser("split", help="sizes of the evaluation split (design notes §4)")
    _add_data_options(split)
    split.add_argument("--seed", type=int, default=42, help="random split seed (default 42)")
    split.add_argument("--method", default="random", help="random (default) or temporal")
    split.add_argument("--test-fraction", type=float, default=0.2, metavar="F", help="default 0.2")
    split.add_argument("--valid-fraction", type=float, default=0.1, metavar="F", help="of train; default 0.1")
    split.add_argument("--json", action="store_true", help="machine-readable output")
    split.set_defaults(func=_split)

    download = actions.add_parser("download", help="fetch a dataset from GroupLens (resumable, checksum-verified)")
    download.add_argument("dataset", choices=("ml-1m",), help="which dataset")
    download.add_argument("--dest", type=Path, required=True, metavar="DIR", help="the dataset lands in DIR/ml-1m")
    download.add_argument("--from-zip", type=Path, metavar="FILE", help="use a local copy of ml-1m.zip instead")
    download.add_argument("--force", action="store_true", help="replace an existing DIR/ml-1m")
    download.add_argument("--json", action="store_true", help="machine-readable output")
    download.set_defaults(func=_download)

    synth = actions.add_parser("synth", help="write a MovieLens-shaped synthetic dataset (MovieLens CSV)")
    synth.add_argument("--users", type=int, required=True, metavar="U", help="number of users (ids 1..U)")
    synth.add_argument("--items", type=int, required=True, metavar="I", help="number of movies (ids 1..I)")
    synth.add_argument("--ratings", type=int, required=True, metavar="N", help="exactly N distinct ratings")
    synth.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for ratings.csv and movies.csv")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same files")
    synth.add_argument("--force", action="store_true", help="replace ratings.csv/movies.csv already in DIR")
    synth.add_argument("--json", action="store_true", help="machine-readable output")
    synth.set_defaults(func=_synth)


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", type=Path, metavar="PATH", help=f"dataset folder or ratings file ({data_default_help()})"
    )
    parser.add_argument("--format", dest="fmt", metavar="F", help=FORMAT_HELP)
    parser.add_argument(
        "--columns",
        metavar="ROLE=NAME,...",
        help="for --format table: which header is user/item/rating/timestamp, e.g. user=uid,item=mid,rating=stars",
    )
    parser.add_argument("--min-rating", type=float, default=4.0, metavar="R", help="positives: rating >= R")


def _parse_columns(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    mapping: dict[str, str] = {}
    for entry in text.split(","):
        role, sep, name = entry.partition("=")
        if not sep or not role.strip() or not name.strip():
            raise MovierecError(f"--columns expects ROLE=NAME pairs separated by commas, got {entry!r}")
        mapping[role.strip()] = name.strip()
    return mapping


def _load(args: argparse.Namespace) -> Any:
    from movierec.trainer.data import load_dataset

    path = args.data or default_ml1m_dir()
    if path is None:
        raise MovierecError("no --data given and no MovieLens-1M found ($MOVIEREC_DATA or ../shared/data/ml-1m)")
    return load_dataset(path, args.fmt, columns=_parse_columns(args.columns))


def _utc(timestamp: int | None) -> str:
    if timestamp is None:
        return "-"
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _stats(args: argparse.Namespace) -> int:
    from movierec.trainer.data import dataset_stats

    stats = dataset_stats(_load(args), min_rating=args.min_rating)
    if args.json:
        print_json(stats)
        return 0
    rows: list[tuple[str, Any]] = [
        ("dataset", f"{stats['dataset']} ({stats['format']})"),
        ("ratings file", stats["path"]),
        ("sha256", stats["sha256"]),
        ("ratings", stats["ratings"]),
        ("users", stats["users"]),
        ("items (rated)", stats["items"]),
        ("movies (metadata rows)", stats["movies"]),
        (f"positives (rating >= {stats['min_rating']:g})", stats["positives"]),
        ("first rating", _utc(stats["first_timestamp"])),
        ("last rating", _utc(stats["last_timestamp"])),
    ]
    rows += [(f"rating {value}", count) for value, count in stats["rating_histogram"].items()]
    print_table(("field", "value"), [(name, _thousands(value)) for name, value in rows])
    return 0


def _thousands(value: Any) -> Any:
    return f"{value:,}" if isinstance(value, int) else value


def _split(args: argparse.Namespace) -> int:
    from movierec.trainer.data import make_split

    split = make_split(
        _load(args),
        min_rating=args.min_rating,
        seed=args.seed,
        test_fraction=args.test_fraction,
        valid_fraction=args.valid_fraction,
        method=args.method,
    )
    sizes = {name: getattr(split, name).nnz for name in ("seen", "train", "fit", "valid", "test")}
    test_users = int((split.test.row_lengths() > 0).sum())
    summary = {"protocol": split.protocol, "users": split.n_users, "items": split.n_items, **sizes}
    summary["users_with_test_items"] = test_users
    if args.json:
        print_json(summary)
        return 0
    print(", ".join(f"{key}={value}" for key, value in split.protocol.items() if key != "dataset_sha256"))
    rows = [("users", split.n_users), ("items", split.n_items), ("users with test items", test_users)]
    rows += [(f"{name} pairs", size) for name, size in sizes.items()]
    print_table(("part", "count"), [(name, f"{value:,}") for name, value in rows])
    return 0


def _download(args: argparse.Namespace) -> int:
    from movierec.trainer.data.download import download_ml1m

    result = download_ml1m(args.dest, from_zip=args.from_zip, force=args.force, progress=not args.json)
    if args.json:
        print_json(
            {
                "dataset": args.dataset,
                "path": str(result.path),
                "source": result.source,
                "md5": result.md5,
                "resumed_from": result.resumed_from,
                "fetched_bytes": result.fetched,
            }
        )
        return 0
    resumed = f" (resumed at byte {result.resumed_from:,})" if result.resumed_from else ""
    print(f"{args.dataset}: verified MD5 {result.md5}, extracted to {result.path}{resumed}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from movierec.trainer.data.synth import generate

    result = generate(
        args.out,
        users=args.users,
        items=args.items,
        ratings=args.ratings,
        seed=args.seed,
        force=args.force,
        progress=False if args.json else None,
    )
    summary = {
        "path": str(result.folder),
        "ratings": result.ratings,
        "users": result.users,
        "items": result.items,
        "users_with_ratings": result.users_with_ratings,
        "items_with_ratings": result.items_with_ratings,
        "seed": args.seed,
        "seconds": round(result.seconds, 2),
    }
    if args.json:
        print_json(summary)
        return 0
    print(
        f"wrote {result.ratings:,} ratings by {result.users_with_ratings:,} users of {result.items_with_ratings:,} "
        f"movies ({result.items:,} in movies.csv) to {result.folder} in {result.seconds:.1f} s"
    )
    return 0
