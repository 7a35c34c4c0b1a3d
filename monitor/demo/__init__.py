"""``sentinel demo``: a scripted run of the daemon on embedded defaults, with benign traffic and attacks.

- :mod:`~monitor.demo.runner`: the run itself (broker, daemon, sending on schedule), :func:`run_demo`;
- :mod:`~monitor.demo.timeline`: the phases, their pace and the traffic of every window;
- :mod:`~monitor.demo.data` and :mod:`~monitor.demo.attacks`: the digits model, its events and the attacks;
- :mod:`~monitor.demo.console`, :mod:`~monitor.demo.alert_watcher`, :mod:`~monitor.demo.webhook_receiver`:
  what the terminal shows while it runs;
- :mod:`~monitor.demo.assessment` and :mod:`~monitor.demo.summary`: what was caught, and the closing summary.
"""
