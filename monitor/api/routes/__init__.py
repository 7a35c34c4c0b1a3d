"""The API's routes, one :class:`fastapi.APIRouter` per resource, included in order by :mod:`monitor.api.app`.

* :mod:`~monitor.api.routes.probes`: ``/healthz``, ``/readyz`` and ``/metrics``;
* :mod:`~monitor.api.routes.models`: ``/v1/models``;
* :mod:`~monitor.api.routes.alerts`: ``/v1/alerts`` and one alert with its deliveries;
* :mod:`~monitor.api.routes.stream`: ``/v1/alerts/stream``, the Server-Sent Events of alert changes;
* :mod:`~monitor.api.routes.results`: ``/v1/windows`` (detector results per window) and ``/v1/anomalies``;
* :mod:`~monitor.api.routes.dead_letters`: ``/v1/dead-letters``;
* :mod:`~monitor.api.routes.subscriptions` and :mod:`~monitor.api.routes.silences`: reading, creating and
  deleting them (writes need the admin scope).
"""
