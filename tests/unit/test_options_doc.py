"""docs/options.md is made from the options' declarations: a stale table fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from minimaldask.spec import OPTIONS, ClusterSpec, options_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "options.md"


def test_the_options_table_in_the_docs_is_current():
    text = DOC.read_text()
    table = text.split("<!-- options:start -->\n", 1)[1].split("<!-- options:end -->", 1)[0]
    assert table == options_table(), (
        "docs/options.md is stale: replace the table between its markers with the output "
        "of `minimaldask options`"
    )


def test_every_field_of_the_spec_is_a_declared_option():
    import dataclasses

    assert [o.name for o in OPTIONS] == [f.name for f in dataclasses.fields(ClusterSpec)]
    assert all(o.help.endswith(".") for o in OPTIONS)


def test_an_unknown_option_names_the_closest_one():
    with pytest.raises(ValueError, match=r"unknown option 'wrokers' \(did you mean 'workers'\?\)"):
        ClusterSpec.from_options(wrokers=3)
