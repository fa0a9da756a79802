"""The robot client (``emotion-monitor robot``): turns the monitor's estimates into actions.

* :mod:`clients.robot.config`: the validated YAML config (``configs/robot.yaml``);
* :mod:`clients.robot.rules`: the sans-I/O rule engine (episodes, changes, outages);
* :mod:`clients.robot.links`: MQTT, WebSocket and rosbridge connections that reconnect;
* :mod:`clients.robot.outputs`: log, mqtt, webhook, command and ros actions;
* :mod:`clients.robot.app`: the client and ``--dry-run``.
"""
