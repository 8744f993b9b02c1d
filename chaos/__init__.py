"""The chaos suite: the order saga under crashes, a broker restart and bad input.

``python -m chaos`` (``make chaos``) runs the full form and prints each invariant with its
counts; ``tests/integration/test_chaos.py`` runs a short form inside ``make test``.
"""
