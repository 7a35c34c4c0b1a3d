"""The daemon: config -> database -> pipeline -> consumer thread + scheduler, with a clean stop.

Run states follow APScheduler/faust: SIGTERM and SIGINT only signal; the stop sequence then stops
consuming, closes the windows that are due, stores them, commits, turns the last results into alerts, lets
the delivery worker finish the delivery in flight and exits 0. A crash logs "crashed" and exits non-zero.

Alerting: the alert engine runs as a scheduler job on every tick (it reads the stored results, so it needs
nothing from the pipeline's memory); the delivery worker sends the outbox on its own thread. Deliveries still
pending at a stop or a crash are sent after the restart.

The HTTP API (:mod:`monitor.api`, ``api.enabled``) is served by uvicorn on its own thread from just after the
database answers until the end of the stop sequence, so it shows the final alerts.
"""

from __future__ import annotations

import enum
import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from monitor.alerting import AlertEngine, DeliveryWorker
from monitor.alerting.webhook_guard import WebhookGuard
from monitor.api.app import RuntimeStatus, create_app
from monitor.api.server import ApiServer
from monitor.api.settings import check_exposure
from monitor.config import AppConfig
from monitor.database import Database, open_store
from monitor.intake.kafka_consumer import Backoff, KafkaIntake
from monitor.pipeline import ClosedWindow, Pipeline
from monitor.retention import purge_expired
from storage import AlertStore, StorageUnavailable, Store, SubscriptionIn
from storage.purge import Retention

log = logging.getLogger("sentinel.daemon")


class RunState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    CRASHED = "crashed"


def wait_for_database(
    database: Database, config: AppConfig, stop: threading.Event | None = None
) -> Database | None:
    """Migrate the schema and ping, retrying with backoff while the database is unreachable; None if
    ``stop`` is set first."""
    backoff = Backoff(config.db_retry_initial, config.db_retry_max)
    while stop is None or not stop.is_set():
        try:
            database.migrate()
            database.store.ping()
            return database
        except StorageUnavailable as exc:
            delay = backoff.next()
            log.warning("database unreachable (%s); retrying in %.1f s", exc, delay)
            if stop is not None:
                stop.wait(delay)
            else:
                time.sleep(delay)
    return None


class Daemon:
    """One Sentinel process."""

    def __init__(self, config: AppConfig, *, on_window: Callable[[ClosedWindow], None] | None = None) -> None:
        self.config = config
        self.on_window = on_window
        self.state = RunState.STARTING
        self._stop = threading.Event()
        self.pipeline: Pipeline | None = None
        self.intake: KafkaIntake | None = None
        self.scheduler: BackgroundScheduler | None = None
        self._tick_backoff = Backoff(config.db_retry_initial, config.db_retry_max)
        self._tick_not_before = 0.0
        self.alert_engine: AlertEngine | None = None
        self.delivery: DeliveryWorker | None = None
        self._alerts_backoff = Backoff(config.db_retry_initial, config.db_retry_max)
        self._alerts_not_before = 0.0
        self.api: ApiServer | None = None
        if config.api.enabled:
            # An open API reachable from the network is refused here, before anything starts.
            check_exposure(config.api)

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        if signum is not None:
            log.info("received %s: stopping", signal.Signals(signum).name)
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self) -> int:
        """Run until stopped; return the process exit code."""
        try:
            # Serve first: /healthz answers (the pod stays alive) and /readyz says "database unreachable"
            # while the database is away, instead of a liveness probe restarting the pod in a loop.
            database = open_store(self.config)
            store = database.store
            self._start_api(database)
            if wait_for_database(database, self.config, self._stop) is None:
                self._stop_api()
                self.state = RunState.STOPPED
                log.info("stopped before the database was reachable")
                return 0
            pipeline = Pipeline(self.config, store, on_window=self.on_window)
            self.pipeline = pipeline
            self._prepare(pipeline)
            self._prepare_alerting(database.alerts)
            self.intake = KafkaIntake(
                self.config.kafka,
                pipeline,
                before_close=self._final_close,
                db_retry=(self.config.db_retry_initial, self.config.db_retry_max),
            )
            self.scheduler = self._build_scheduler(store)
            self.scheduler.start()
            if self.delivery is not None:
                self.delivery.start()
            self.intake.start()
            self.state = RunState.RUNNING
            log.info("running")
            while not self._stop.wait(0.5):
                if not self.intake.is_alive():
                    raise RuntimeError("intake thread ended unexpectedly") from self.intake.error
            self.state = RunState.STOPPING
            self.scheduler.shutdown(wait=True)
            self.intake.stop()
            self.intake.join()
            if self.intake.error is not None:
                raise RuntimeError("intake failed while stopping") from self.intake.error
            self._final_alerts()
            self._stop_api()
            self.state = RunState.STOPPED
            log.info("stopped")
            return 0
        except Exception:
            self.state = RunState.CRASHED
            log.exception("crashed")
            if self.delivery is not None:
                self.delivery.stop(timeout=5.0)
            self._stop_api()
            return 1

    def _build_scheduler(self, store: Store) -> BackgroundScheduler:
        """The periodic jobs: close due windows, purge expired history, turn new results into alerts."""
        scheduler = BackgroundScheduler(timezone="UTC")

        def every(seconds: float, job: Callable[..., None], job_id: str, **options: Any) -> None:
            # One run of a job at a time; runs missed while one was slow are made up once, not one by one.
            scheduler.add_job(
                job, "interval", seconds=seconds, id=job_id, max_instances=1, coalesce=True, **options
            )

        every(self.config.tick_interval, self._tick, "close-windows")
        if self.config.retention.enabled:
            every(
                self.config.retention.interval,
                self._retention_tick,
                "retention",
                args=[Retention(store.engine)],
                next_run_time=datetime.now(UTC),  # once at start, then every interval
            )
        if self.alert_engine is not None:
            every(self.config.tick_interval, self._alert_tick, "alerts")
        return scheduler

    def _retention_tick(self, retention: Retention) -> None:
        try:
            purge_expired(retention, self.config.retention, datetime.now(UTC))
        except StorageUnavailable as exc:
            log.warning("retention skipped this run: database unavailable (%s)", exc)

    def _start_api(self, database: Database) -> None:
        """Serve the HTTP API on its own thread (``api.enabled``).

        A port that cannot be bound is logged, not fatal: monitoring and alerting are the main job, and a
        missing API shows at once in failing probes.
        """
        settings = self.config.api
        if not settings.enabled:
            return
        app = create_app(
            database.store,
            database.alerts,
            settings,
            status_provider=self.runtime_status,
            webhook_guard=WebhookGuard.from_settings(self.config.alerting.delivery),
        )
        try:
            self.api = ApiServer(app, settings.host, settings.port)
        except OSError as exc:
            log.error(
                "HTTP API cannot listen on %s:%d (%s); running without it", settings.host, settings.port, exc
            )
            return
        self.api.start()

    def _stop_api(self) -> None:
        if self.api is not None:
            self.api.stop()
            self.api = None

    def runtime_status(self) -> RuntimeStatus:
        """The daemon's view for /readyz, /metrics and /v1/models (called from the API's threads)."""
        pipeline, intake = self.pipeline, self.intake
        return RuntimeStatus(
            state=self.state.value,
            broker_connected=intake is not None and intake.connected.is_set(),
            partitions_assigned=0 if intake is None else len(intake.assigned),
            models_ready=pipeline is not None and pipeline.ready,
            models={} if pipeline is None else pipeline.status(),
            counters={} if pipeline is None else dict(pipeline.counters),
            events_by_model={} if pipeline is None else pipeline.events_by_model.snapshot(),
            consumer_lag={} if intake is None else dict(intake.lag),
            histograms={}
            if pipeline is None
            else {
                "sentinel_window_close_seconds": pipeline.window_seconds.snapshot(),
                "sentinel_detector_seconds": pipeline.detector_seconds.snapshot(),
            },
        )

    def _prepare(self, pipeline: Pipeline) -> None:
        backoff = Backoff(self.config.db_retry_initial, self.config.db_retry_max)
        while not self._stop.is_set():
            try:
                pipeline.prepare()
                return
            except StorageUnavailable as exc:
                delay = backoff.next()
                log.warning("database unavailable while loading models (%s); retrying in %.1f s", exc, delay)
                self._stop.wait(delay)

    def _prepare_alerting(self, alert_store: AlertStore) -> None:
        """Sync the configured subscriptions into the database; build the alert engine and delivery worker."""
        settings = self.config.alerting
        if not settings.enabled:
            log.info("alerting is disabled (alerting.enabled: false)")
            return
        wanted = [
            SubscriptionIn(
                name=s.name,
                url=s.url,
                secret=s.secret.get_secret_value() if s.secret is not None else None,
                format=s.format,
                models=tuple(s.models),
                detectors=tuple(s.detectors),
                threats=tuple(s.threats),
                min_severity=s.min_severity,
            )
            for s in settings.subscriptions
        ]
        backoff = Backoff(self.config.db_retry_initial, self.config.db_retry_max)
        while not self._stop.is_set():
            try:
                active = alert_store.sync_config_subscriptions(wanted, datetime.now(UTC))
                break
            except StorageUnavailable as exc:
                delay = backoff.next()
                log.warning(
                    "database unavailable while syncing subscriptions (%s); retrying in %.1f s", exc, delay
                )
                self._stop.wait(delay)
        else:
            return
        log.info(
            "alerting: %d webhook subscription(s)%s",
            len(active),
            f", Kafka topic {settings.kafka_topic}" if settings.kafka_topic else "",
        )
        self.alert_engine = AlertEngine(alert_store, settings)
        self.delivery = DeliveryWorker(alert_store, settings.delivery, kafka=self.config.kafka)

    def _alert_tick(self) -> None:
        """Scheduler job: turn new results into alerts and enqueue the notifications that are due."""
        assert self.alert_engine is not None
        if time.monotonic() < self._alerts_not_before:
            return
        try:
            report = self.alert_engine.run_once()
            self._alerts_backoff.reset()
        except StorageUnavailable as exc:
            delay = self._alerts_backoff.next()
            self._alerts_not_before = time.monotonic() + delay
            log.warning("database unavailable (%s); alert evaluation retries in %.1f s", exc, delay)
            return
        if report.processed or report.notifications:
            log.debug(
                "alerts: %d results, %d opened, %d resolved, %d notifications",
                report.processed,
                report.opened,
                report.resolved,
                report.notifications,
            )

    def _final_alerts(self) -> None:
        """At stop: alerts for the windows stored by the final close, then let the worker finish its send."""
        if self.alert_engine is not None:
            try:
                self.alert_engine.run_once()
            except StorageUnavailable as exc:
                log.warning("could not evaluate alerts at stop (%s); they are evaluated on restart", exc)
        if self.delivery is not None:
            self.delivery.stop(timeout=max(30.0, self.config.alerting.delivery.timeout * 2))

    def _tick(self) -> None:
        """Scheduler job: fit what needs fitting, close and store the windows that are due."""
        assert self.pipeline is not None
        if time.monotonic() < self._tick_not_before:
            return
        try:
            self.pipeline.fit_pending()
            self.pipeline.close_due()
            self._tick_backoff.reset()
        except StorageUnavailable as exc:
            delay = self._tick_backoff.next()
            self._tick_not_before = time.monotonic() + delay
            log.warning("database unavailable (%s); windows stay queued, retrying in %.1f s", exc, delay)

    def _final_close(self) -> None:
        assert self.pipeline is not None
        try:
            self.pipeline.fit_pending()
            self.pipeline.close_due()
        except StorageUnavailable as exc:
            log.warning("could not store the due windows at stop (%s); they are re-read on restart", exc)
