"""Publishers: async context managers that deliver events (WebSocket, MQTT, JSONL).

Import the concrete publishers from their modules (``streamer.publishers.mqtt``
needs the optional ``aiomqtt``).
"""

from streamer.publishers.base import DropOldestQueue, Event, Publisher, PublisherStats, encode_event

__all__ = ["DropOldestQueue", "Event", "Publisher", "PublisherStats", "encode_event"]
