"""callstream event contract: Avro schemas, topic catalogue, serializers and pydantic event models."""
