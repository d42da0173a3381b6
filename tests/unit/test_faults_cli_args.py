"""The CLI's argument types under fuzzing: a value or an ArgumentTypeError naming the input."""

from __future__ import annotations

import argparse
import string
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cli import args as cli_args

PARSERS: dict[str, Callable[[str], Any]] = {
    "endpoint_id": cli_args.endpoint_id,
    "delivery_id": cli_args.delivery_id,
    "page_size": cli_args.page_size,
    "duration": cli_args.duration,
    "since": cli_args.since,
    "seconds": cli_args.seconds,
    "words": cli_args.words,
}
# What an operator might type, and what a fuzzer would: numbers with units, dates, digits of every
# script, huge counts, signs, blanks.
ARGUMENTS = st.one_of(
    st.text(max_size=30),
    st.text(string.digits + "smhdw .-+:TZe", max_size=30),
    st.builds(lambda n, u: f"{n}{u}", st.integers(-(10**12), 10**12), st.sampled_from("smhdw")),
    st.builds(lambda n: "9" * n, st.integers(1, 400)),
    st.sampled_from(["²", "٣", "1e309", "nan", "-0", "0x10", "9999-12-31T23:59:59+14:00"]),
)


@pytest.mark.parametrize("name", sorted(PARSERS))
@settings(max_examples=300, deadline=None)
@given(text=ARGUMENTS)
def test_argument_types_refuse_with_a_message_naming_the_input(name: str, text: str) -> None:
    """Every argument type returns a value or raises ArgumentTypeError quoting the input, which
    argparse prints as one line; never another exception (that would be a traceback)."""
    message = None
    try:
        PARSERS[name](text)
    except argparse.ArgumentTypeError as exc:
        message = str(exc)
    assert message is None or repr(text) in message
