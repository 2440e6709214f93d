"""Crypton: a stream-native cryptocurrency exchange whose only database is the Kafka log."""

__version__ = "0.1.0"
