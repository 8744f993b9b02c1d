"""``python -m sagas`` runs the ``sagas`` command line."""

from sagas.cli import main

main()
