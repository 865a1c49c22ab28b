"""Errors for people: one line naming where (file and line, or path), the field, what was expected and
what was found, e.g. ``exp.yaml:7: arms.treatment.run: expected a ranking run name, found nothing``."""

from __future__ import annotations


class InputError(ValueError):
    """Input the user can fix; ``str(err)`` is the one line a command prints."""


def input_error(where, field: str, expected: str, found) -> InputError:
    """``<where>: <field>: expected <expected>, found <found>`` (where: 'file:line' or a path)."""
    return InputError(f"{where}: {field}: expected {expected}, found {found}")
