"""Errors of the event contract, typed so consumers can tell bad data from a broken dependency."""

from __future__ import annotations


class SchemaError(ValueError):
    """A message or record does not fit the event contract.

    The message names schemas, fields and byte offsets, never field values: they may be PHI.
    Consumers dead-letter the message; retrying cannot help.
    """


class SchemaRegistryError(RuntimeError):
    """The Schema Registry could not be reached or answered unexpectedly.

    Distinct from SchemaError because the data may be fine: consumers retry instead of
    dead-lettering.
    """
