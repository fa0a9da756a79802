"""Publishers: async context managers that deliver the hub's messages (WebSocket, MQTT, JSONL, webhook).

Import the concrete publishers from their modules (``streamer.publishers.mqtt``
needs the optional ``aiomqtt``).
"""

from streamer.publishers.base import DropOldestQueue, Message, Publisher, PublisherStats, encode

__all__ = ["DropOldestQueue", "Message", "Publisher", "PublisherStats", "encode"]
