"""Validation helpers: every message names the field and what is allowed."""

from __future__ import annotations

from pagellm.errors import ClientError, NotSupportedError


def check_range(name: str, value, low=None, high=None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ClientError(f"{name} must be a number, got {value!r}", param=name)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ClientError(f"{name} must be in {bounds}, got {value}", param=name)


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ClientError(f"{name} must be one of {list(choices)}, got {value!r}", param=name)


def not_supported_yet(name: str, value, hint: str = "") -> None:
    raise NotSupportedError(
        f"{name}={value!r} is not supported yet in pagellm; remove it or use the default{hint}",
        param=name)
