"""Peer recommenders for ``benchmarks/accuracy.py``: the rows LightGCN is compared against.

Not part of the installed package on purpose: peers pull in heavy optional
libraries (pyspark, scikit-surprise, implicit) that neither the server nor the
trainer should ever depend on. Every peer speaks the same two-method
interface (:class:`peers.base.Peer`) so that the benchmark scores them all with
one evaluator on one split. The library-backed peers import their library
lazily, inside ``fit``, so the numpy-only peers work without the extra.
"""

from peers.base import ExplicitRatings, Peer, TrainingData, positives_matrix
from peers.ease import Ease
from peers.popularity import Popularity
from peers.puresvd import PureSvd

__all__ = ["Ease", "ExplicitRatings", "Peer", "Popularity", "PureSvd", "TrainingData", "positives_matrix"]
