"""The Bytewax dataflow of the exchange and its Kafka wiring."""
