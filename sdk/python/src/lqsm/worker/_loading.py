"""Finding the app a worker serves: `-A pkg.module:app` (or `pkg.module`, whose `app`
attribute is taken), imported as Celery's `-A` does."""

from __future__ import annotations

import importlib
import os
import sys

from ..app import App


class AppNotFound(Exception):
    """`-A` does not name an importable `lqsm.App`."""


def load_app(reference: str) -> App:
    """The `App` that `reference` (`module:attribute` or `module`) names; the current
    directory is importable, as for `python -m`."""
    module_name, _, attribute = reference.partition(":")
    if not module_name:
        raise AppNotFound(f"-A {reference!r}: give the app as MODULE:ATTRIBUTE, e.g. -A proj.tasks:app")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise AppNotFound(f"-A {reference!r}: cannot import `{module_name}` ({e})") from e
    name = attribute or "app"
    app = getattr(module, name, None)
    if not isinstance(app, App):
        found = "nothing" if app is None else f"a {type(app).__name__}"
        raise AppNotFound(f"-A {reference!r}: `{module_name}.{name}` is {found}, not an lqsm.App")
    return app
