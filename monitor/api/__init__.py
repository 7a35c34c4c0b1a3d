"""Sentinel's HTTP API (contract section 5): :func:`monitor.api.app.create_app` builds the FastAPI app.

Nothing is re-exported here: importing the app (FastAPI, storage) from the package would make
``monitor.config``'s import of :mod:`monitor.api.settings` heavy.
"""
