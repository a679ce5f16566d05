"""`python -m lqsm worker -A proj.tasks:app`: the Python worker (see `lqsm.worker`)."""

from .worker import main

main()
