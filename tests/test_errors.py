"""The error tree's boundary helper: driver exceptions become the project's, bugs do not."""

from __future__ import annotations

import pytest

from livedata.errors import (
    BackendTimeout,
    BackendUnavailable,
    BusError,
    BusTimeout,
    ConfigError,
    ErrorMap,
    StoreError,
    StoreProtocolError,
    StoreTimeout,
    StoreUnavailable,
    map_exceptions,
)


class DriverError(Exception):
    """A driver's base error."""


class DriverProtocolError(DriverError):
    """A driver's error for an answer it could not read."""


MAPPING: ErrorMap = {
    TimeoutError: StoreTimeout,  # before OSError, of which it is a subclass
    (ConnectionError, OSError): StoreUnavailable,
    DriverProtocolError: StoreProtocolError,
    DriverError: StoreError,
}


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (TimeoutError("slow"), StoreTimeout),
        (ConnectionRefusedError("refused"), StoreUnavailable),
        (OSError("disk"), StoreUnavailable),
        (DriverProtocolError("garbage"), StoreProtocolError),
        (DriverError("server says no"), StoreError),
    ],
)
def test_the_first_matching_entry_decides_the_error(raised: Exception, expected: type) -> None:
    """Each driver error becomes exactly its entry's type, with what failed, why and the cause."""
    with pytest.raises(StoreError) as caught, map_exceptions(MAPPING, "sqlite store: write"):
        raise raised
    assert type(caught.value) is expected
    assert caught.value.__cause__ is raised
    assert str(caught.value) == f"sqlite store: write failed: {type(raised).__name__}: {raised}"


def test_kinds_are_shared_by_stores_and_buses() -> None:
    """A store timeout and a bus timeout are both BackendTimeout, yet StoreError and BusError stay apart."""
    assert issubclass(StoreTimeout, BackendTimeout) and issubclass(BusTimeout, BackendTimeout)
    assert issubclass(StoreUnavailable, BackendUnavailable)
    assert not issubclass(BusTimeout, StoreError) and not issubclass(StoreTimeout, BusError)


@pytest.mark.parametrize("bug", [ValueError("bad arg"), TypeError("not iterable"), KeyError("k")])
def test_programming_errors_pass_through(bug: Exception) -> None:
    """A ValueError, TypeError or other bug not in the map is raised as it is, not as StoreError."""
    with pytest.raises(type(bug)) as caught, map_exceptions(MAPPING, "write"):
        raise bug
    assert caught.value is bug


def test_own_errors_pass_through_even_if_a_mapping_would_match() -> None:
    """A LivedataError raised inside is not wrapped again, even by a catch-all entry."""
    with pytest.raises(ConfigError) as caught, map_exceptions({Exception: StoreError}, "start"):
        raise ConfigError("bad URL")
    assert str(caught.value) == "bad URL"


def test_custom_detail_and_no_error() -> None:
    """The detail function formats the driver's error; a block that raises nothing is untouched."""
    detail = map_exceptions({DriverError: StoreError}, "ch: insert", lambda exc: "code 241")
    with pytest.raises(StoreError, match=r"^ch: insert failed: code 241$"), detail:
        raise DriverError("Memory limit exceeded\nStack trace: ...")
    with map_exceptions(MAPPING, "nothing"):
        value = 1
    assert value == 1
