"""Spark MLlib ALS with implicit preferences: the seed's "ALS (Spark)" row, run for real."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from peers.base import TrainingData, require_fitted

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, Row, SparkSession


def _ensure_java_home() -> None:
    """Point JAVA_HOME at the ``java`` on PATH when unset: pyspark needs it to launch the JVM."""
    if os.environ.get("JAVA_HOME"):
        return
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("Spark needs Java 17+: install it or set JAVA_HOME")
    os.environ["JAVA_HOME"] = str(Path(java).resolve().parent.parent)


@contextmanager
def local_spark(cores: int = 2, driver_memory: str = "2g") -> Iterator[SparkSession]:
    """A quiet local-mode Spark session (no UI, few shuffle partitions), stopped on exit.

    One session is shared by every ALS fit of a benchmark run because starting
    the JVM costs seconds that would otherwise be charged to each fit.
    """
    from pyspark.sql import SparkSession

    _ensure_java_home()
    session = (
        SparkSession.builder.master(f"local[{cores}]")
        .appName("movierec-peers")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(2 * cores))
        .config("spark.default.parallelism", str(2 * cores))
        .config("spark.driver.memory", driver_memory)
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()


class SparkAls:
    """``pyspark.ml.recommendation.ALS(implicitPrefs=True)`` on the training positives (value 1).

    Spark's implicit ALS is Hu, Koren & Volinsky's weighted factorisation with
    confidence ``1 + alpha·r``; its ``regParam`` is scaled by each user's and
    item's number of ratings. Scores are the dot products of the learned
    factors, which is exactly what ``ALSModel.transform`` predicts, computed
    here with numpy for all items at once.
    """

    def __init__(
        self,
        spark: SparkSession,
        rank: int = 64,
        reg: float = 0.01,
        alpha: float = 1.0,
        iterations: int = 10,
        seed: int = 42,
        blocks: int = 2,
    ) -> None:
        self.spark = spark
        self.blocks = blocks
        self.rank = rank
        self.reg = reg
        self.alpha = alpha
        self.iterations = iterations
        self.seed = seed
        self._user_vectors: npt.NDArray[np.float32] | None = None
        self._item_vectors: npt.NDArray[np.float32] | None = None

    def fit(self, data: TrainingData) -> None:
        from pyspark.ml.recommendation import ALS

        frame = _positives_frame(self.spark, data)
        als = ALS(
            rank=self.rank,
            maxIter=self.iterations,
            regParam=self.reg,
            alpha=self.alpha,
            implicitPrefs=True,
            userCol="user",
            itemCol="item",
            ratingCol="rating",
            intermediateStorageLevel="MEMORY_ONLY",
            finalStorageLevel="MEMORY_ONLY",
            seed=self.seed,
            nonnegative=False,
            numUserBlocks=self.blocks,
            numItemBlocks=self.blocks,
        )
        try:
            model = als.fit(frame)
        finally:
            frame.unpersist()
        self._user_vectors = _factor_matrix(model.userFactors.collect(), data.n_users, self.rank)
        self._item_vectors = _factor_matrix(model.itemFactors.collect(), data.n_items, self.rank)

    def score(self, user_rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        users = require_fitted(self._user_vectors)
        items = require_fitted(self._item_vectors)
        return users[user_rows] @ items.T


def _positives_frame(spark: SparkSession, data: TrainingData) -> DataFrame:
    """The positives as a (user, item, rating=1) DataFrame, cached.

    Written to a CSV file that the JVM reads itself: ``createDataFrame`` on a
    Python list would pickle half a million tuples through Python workers,
    which costs more than the ALS fit on two cores.
    """
    from pyspark.sql.functions import lit

    rows, cols = data.positives.to_pairs()
    folder = Path(tempfile.mkdtemp(prefix="movierec-spark-"))
    path = folder / "positives.csv"
    np.savetxt(path, np.column_stack([rows, cols]), fmt="%d", delimiter=",")
    frame = spark.read.csv(str(path), schema="user INT, item INT").withColumn("rating", lit(1.0)).cache()
    frame.count()  # materialise the cache so the CSV file can go
    shutil.rmtree(folder)
    return frame


def _factor_matrix(factor_rows: Sequence[Row], n_rows: int, rank: int) -> npt.NDArray[np.float32]:
    """Spark's (id, features) rows as a dense matrix; ids Spark never saw keep a zero vector (score 0)."""
    matrix = np.zeros((n_rows, rank), dtype=np.float32)
    for row in factor_rows:
        matrix[int(row["id"])] = np.asarray(row["features"], dtype=np.float32)
    return matrix
