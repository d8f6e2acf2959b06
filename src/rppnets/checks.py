"""Argument checks that fail early with a message naming the argument, its value and what is allowed."""

from collections.abc import Iterable
from numbers import Integral


def check_int(name: str, value, minimum: int, maximum: int | None = None) -> int:
    """Return `value` if it is an integer in [minimum, maximum], else raise a ValueError naming `name`."""
    # bool is an Integral in Python, but `width=True` is always a mistake.
    ok = isinstance(value, Integral) and not isinstance(value, bool)
    ok = ok and value >= minimum and (maximum is None or value <= maximum)
    if not ok:
        allowed = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
        raise ValueError(f"{name}={value!r} is invalid; allowed: {allowed}")
    return int(value)


def check_choice(name: str, value, allowed: Iterable[str]) -> str:
    """Return `value` if it is one of `allowed`, else raise a ValueError naming `name` and the choices."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is invalid; allowed: {', '.join(map(repr, allowed))}")
    return value
