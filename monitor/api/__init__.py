"""Sentinel's HTTP API: :func:`monitor.api.app.create_app` assembles the FastAPI app.

The routes, one router per resource, are in :mod:`monitor.api.routes`; their bodies in
:mod:`~monitor.api.schemas`, cursor paging in :mod:`~monitor.api.paging`, what they share (stores, token
scopes, documented errors) in :mod:`~monitor.api.dependencies`, and the ``/metrics`` text in
:mod:`~monitor.api.prometheus`. The queries behind them live in :mod:`storage.queries`.

Nothing is re-exported here: importing the app (FastAPI, storage) from the package would make
``monitor.config``'s import of :mod:`monitor.api.settings` heavy.
"""
