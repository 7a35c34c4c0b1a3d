"""Sentinel's HTTP API (contract section 5): :func:`monitor.api.app.create_app` builds the FastAPI app.

Nothing is re-exported here: importing the app (FastAPI, storage) from the package would make
``monitor.config``'s import of :mod:`monitor.api.settings` heavy.
"""

# monitor.config imports ApiSettings from this package, and the settings subclass monitor.config's base:
# loading monitor.config first makes the import order the same whichever module is imported first.
import monitor.config  # noqa: F401  isort: skip
