"""Errors that users see.

``SpecError`` is raised for bad input anywhere in simfoe. The CLI turns it into one line
``error: <field>: <value!r> is not allowed; <allowed>`` on stderr and exit code 2.
"""
from __future__ import annotations


class SpecError(ValueError):
    """Bad user input: names the field, the value given and what is allowed."""

    def __init__(self, field: str, value: object, allowed: str):
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}: {value!r} is not allowed; {allowed}")
