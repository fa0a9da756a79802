"""Clients that subscribe to the monitor's events.

* ``clients/dashboard/``: the live web dashboard (static HTML/JS/CSS, no build
  step, works offline) that the daemon serves next to its WebSocket at ``/``;
* :mod:`clients.watch`: the terminal client behind ``emotion-monitor watch``.
"""
