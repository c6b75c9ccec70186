"""Tests of the pure guards core (guards/)."""
