"""``recctl``: the command line for training, indexing, serving and querying movierec."""
