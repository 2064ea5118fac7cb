"""SimulationRequest: what is accepted, what is refused (with the field and the rule), digest."""

from __future__ import annotations

import json
import random
import unicodedata
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from obp_workflow.core.errors import FieldError, InvalidRequest
from obp_workflow.core.request import MAX_METADATA_BYTES, SimulationRequest

COMMAND_REQUEST: dict[str, Any] = {
    "kind": "simulation",
    "name": "Hippocampus CA1, 10 s",
    "command": ["neurodamus", "--config", "simulation_config.json"],
    "resources": {
        "nodes": 4,
        "tasks_per_node": 32,
        "cpus_per_task": 2,
        "memory_mb": 64_000,
        "time_limit_minutes": 120,
        "partition": "prod",
        "account": "proj134",
    },
    "inputs": ["https://openbrainplatform.org/data/circuit/1", "/obi/data/project/circuit"],
    "outputs": ["output/spikes.h5", "output/soma_report.h5"],
    "metadata": {"campaign": "ca1-baseline", "seed": 42, "dt": 0.025, "debug": False},
}

SCRIPT_REQUEST: dict[str, Any] = {
    "kind": "job",
    "script": "#!/bin/bash\nset -e\nsrun neurodamus --config simulation_config.json\n",
    "outputs": ["log.txt"],
}


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of ``base`` with top-level ``changes``; a change to None removes the field."""
    data = {**base, **changes}
    return {k: v for k, v in data.items() if v is not None}


def with_resources(**changes: Any) -> dict[str, Any]:
    return with_(COMMAND_REQUEST, resources={**COMMAND_REQUEST["resources"], **changes})


def refusal(data: object) -> tuple[FieldError, ...]:
    """The errors of the InvalidRequest that parsing ``data`` must raise."""
    with pytest.raises(InvalidRequest) as caught:
        SimulationRequest.parse(data)
    errors = caught.value.errors
    assert errors, "an InvalidRequest must name at least one rejected value"
    for error in errors:
        assert error.field
        assert error.rule
    return errors


def assert_refused_at(data: object, field: str) -> FieldError:
    """Parsing ``data`` is refused, and one error names exactly ``field``."""
    errors = refusal(data)
    named = [e for e in errors if e.field == field]
    assert named, f"expected an error on {field!r}, got {errors}"
    return named[0]


def assert_refused_within(data: object, field: str) -> FieldError:
    """Refused with an error on ``field`` itself or one of its items (``field.N``)."""
    errors = refusal(data)
    named = [e for e in errors if e.field == field or e.field.startswith(field + ".")]
    assert named, f"expected an error on {field!r} or one of its items, got {errors}"
    return named[0]


# ---------------------------------------------------------------------------- accepted


def test_accepts_a_command_request() -> None:
    req = SimulationRequest.parse(COMMAND_REQUEST)

    assert req.command == ["neurodamus", "--config", "simulation_config.json"]
    assert req.script is None
    assert req.resources.nodes == 4
    assert req.resources.partition == "prod"
    assert req.resources.account == "proj134"
    assert req.outputs == ["output/spikes.h5", "output/soma_report.h5"]
    assert req.metadata == {"campaign": "ca1-baseline", "seed": 42, "dt": 0.025, "debug": False}


def test_accepts_a_script_request_with_defaults() -> None:
    req = SimulationRequest.parse(SCRIPT_REQUEST)

    assert req.script == SCRIPT_REQUEST["script"]
    assert req.command is None
    assert req.kind == "job"
    assert (req.resources.nodes, req.resources.time_limit_minutes) == (1, 60)
    assert req.resources.partition is None
    assert req.inputs == []
    assert req.metadata == {}


def test_absolute_input_paths_are_normalised() -> None:
    req = SimulationRequest.parse(with_(COMMAND_REQUEST, inputs=["/obi/data//project/./circuit/"]))

    assert req.inputs == ["/obi/data/project/circuit"]


@pytest.mark.parametrize(
    "path",
    ["spikes.h5", "output/spikes.h5", "a-b/c_d.e@f+g=h,i", ".hidden", "x/-not-first", "x" * 1024],
)
def test_accepts_safe_relative_outputs(path: str) -> None:
    assert SimulationRequest.parse(with_(COMMAND_REQUEST, outputs=[path])).outputs == [path]


@pytest.mark.parametrize("name", ["prod", "debug", "gpu_v100", "cpu.long-2", "_x", "a" * 64])
def test_accepts_plain_scheduler_names(name: str) -> None:
    req = SimulationRequest.parse(with_resources(partition=name, account=name))

    assert (req.resources.partition, req.resources.account) == (name, name)


@pytest.mark.parametrize(
    ("field", "value"),
    [("nodes", 4096), ("tasks_per_node", 1024), ("time_limit_minutes", 14 * 24 * 60)],
)
def test_accepts_numbers_at_their_upper_bound(field: str, value: int) -> None:
    req = SimulationRequest.parse(with_resources(**{field: value}))

    assert getattr(req.resources, field) == value


def test_accepts_metadata_of_exactly_the_limit() -> None:
    # {"k": "..."} as JSON with the default separators is 9 bytes plus the value.
    metadata = {"k": "x" * (MAX_METADATA_BYTES - 9)}
    assert len(json.dumps(metadata).encode()) == MAX_METADATA_BYTES

    assert SimulationRequest.parse(with_(COMMAND_REQUEST, metadata=metadata)).metadata == metadata


# ---------------------------------------------------------------------------- what to run


@pytest.mark.parametrize(
    "data",
    [
        with_(COMMAND_REQUEST, script="echo both"),
        with_(COMMAND_REQUEST, command=None),
        {},
    ],
    ids=["both", "neither", "empty-body"],
)
def test_exactly_one_of_command_and_script(data: dict[str, Any]) -> None:
    errors = refusal(data)

    assert any("command" in e.rule and "script" in e.rule for e in errors), errors


@pytest.mark.parametrize("program", ["", "-rf", "--help", "-"], ids=repr)
def test_program_must_be_non_empty_and_not_an_option(program: str) -> None:
    error = assert_refused_within(with_(COMMAND_REQUEST, command=[program, "x"]), "command")

    assert "program" in error.rule


def test_empty_command_is_refused() -> None:
    assert_refused_within(with_(COMMAND_REQUEST, command=[]), "command")


def test_nul_in_a_command_argument_is_refused() -> None:
    error = assert_refused_within(with_(COMMAND_REQUEST, command=["echo", "a\x00b"]), "command")

    assert "NUL" in error.rule


def test_nul_in_a_script_is_refused() -> None:
    error = assert_refused_at(with_(SCRIPT_REQUEST, script="echo a\x00b"), "script")

    assert "NUL" in error.rule


def test_an_overlong_argument_is_refused() -> None:
    assert_refused_within(with_(COMMAND_REQUEST, command=["echo", "x" * 4097]), "command")


# ---------------------------------------------------------------------------- unknown fields


def test_unknown_top_level_field_is_refused() -> None:
    assert_refused_at(with_(COMMAND_REQUEST, run_as="root"), "run_as")


def test_unknown_resource_field_is_refused() -> None:
    assert_refused_at(with_resources(sbatch_extra="--uid=0"), "resources.sbatch_extra")


@pytest.mark.parametrize("data", [None, "command", ["echo"], 42])
def test_a_body_that_is_not_an_object_is_refused(data: object) -> None:
    refusal(data)


# ---------------------------------------------------------------------------- resources


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("nodes", 0),
        ("nodes", -1),
        ("nodes", 4097),
        ("tasks_per_node", 0),
        ("cpus_per_task", 0),
        ("cpus_per_task", 1025),
        ("memory_mb", 0),
        ("time_limit_minutes", 0),
        ("time_limit_minutes", 14 * 24 * 60 + 1),
        ("nodes", "4; rm -rf /"),
    ],
)
def test_out_of_range_resources_are_refused(field: str, value: object) -> None:
    assert_refused_at(with_resources(**{field: value}), f"resources.{field}")


HOSTILE_SCHEDULER_NAMES = [
    "debug; rm -rf /",
    "--uid=0",
    "-p",
    "$(id)",
    "${IFS}",
    "de\nbug",
    "debug\n--uid=0",
    "`id`",
    "debug partition",
    " debug",
    "",
    "a" * 65,
    "prod'",
    'prod"',
    "prod\x00",
    "prod/../x",
    "prodé",
]


@pytest.mark.parametrize("field", ["partition", "account"])
@pytest.mark.parametrize("value", HOSTILE_SCHEDULER_NAMES, ids=repr)
def test_hostile_scheduler_names_are_refused(field: str, value: str) -> None:
    error = assert_refused_at(with_resources(**{field: value}), f"resources.{field}")

    assert "letters" in error.rule


# ---------------------------------------------------------------------------- outputs

HOSTILE_OUTPUTS = [
    "../x",
    "a/../../x",
    "..",
    "/abs",
    "/etc/passwd",
    "a//b",
    "a/",
    "./a",
    "a/./b",
    ".",
    "-rf",
    "--delete",
    "a b",
    "a'b",
    'a"b',
    "$(touch pwned)",
    "`id`",
    "a;b",
    "a\\b",
    "~/x",
    "*",
    "a\nb",
    "",
    "x" * 2000,
    "a/" * 600 + "b",
]


@pytest.mark.parametrize("path", HOSTILE_OUTPUTS, ids=lambda p: repr(p)[:40])
def test_hostile_outputs_are_refused(path: str) -> None:
    assert_refused_within(with_(COMMAND_REQUEST, outputs=["ok.h5", path]), "outputs")


def test_an_output_of_1025_bytes_is_refused() -> None:
    assert_refused_within(with_(COMMAND_REQUEST, outputs=["x" * 1025]), "outputs")


def test_duplicate_outputs_are_refused() -> None:
    error = assert_refused_within(
        with_(COMMAND_REQUEST, outputs=["a.h5", "b.h5", "a.h5"]), "outputs"
    )

    assert "twice" in error.rule


@pytest.mark.parametrize(
    ("field", "values", "bad_indexes"),
    [
        ("outputs", ["ok.h5", "../x", "fine/y.h5", "/abs"], [1, 3]),
        ("inputs", ["/obi/data/ok", "relative/x", "https://kg/ok", "/a/../b"], [1, 3]),
    ],
)
def test_each_rejected_list_item_is_named_by_its_index(
    field: str, values: list[str], bad_indexes: list[int]
) -> None:
    """'Every rejected value is named in one InvalidRequest' (SimulationRequest.parse)."""
    errors = refusal(with_(COMMAND_REQUEST, **{field: values}))

    assert sorted(e.field for e in errors) == [f"{field}.{i}" for i in bad_indexes], errors


# ---------------------------------------------------------------------------- inputs

HOSTILE_INPUTS = [
    "relative/path",
    "circuit",
    "",
    "ftp://host/x",
    "file:///etc/passwd",
    "s3://bucket/key",
    "~/x",
    "/data/../etc/passwd",
    "/data/x/..",
    "/data/$(id)",
    "/data/`id`",
    "/data/a b",
    "/data/a;b",
    "/data/a'b",
    "https://kg/a b",
    "https://kg/a\tb",
    "https://kg/a\x01b",
    "https://kg/" + "x" * 2048,
]


@pytest.mark.parametrize("value", HOSTILE_INPUTS, ids=lambda v: repr(v)[:40])
def test_inputs_must_be_iris_or_safe_absolute_paths(value: str) -> None:
    assert_refused_within(with_(COMMAND_REQUEST, inputs=[value]), "inputs")


# ---------------------------------------------------------------------------- trailing newline


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (with_resources(partition="debug\n"), "resources.partition"),
        (with_resources(account="proj134\n"), "resources.account"),
        (with_(COMMAND_REQUEST, outputs=["spikes.h5\n"]), "outputs"),
        (with_(COMMAND_REQUEST, inputs=["/obi/data/circuit\n"]), "inputs"),
    ],
    ids=["partition", "account", "outputs", "inputs"],
)
def test_a_trailing_newline_is_refused(data: dict[str, Any], field: str) -> None:
    """A regex ending in ``$`` also matches before a final newline: ``fullmatch`` does not."""
    assert_refused_within(data, field)


# ---------------------------------------------------------------------------- metadata, name


def test_metadata_over_16_kib_is_refused() -> None:
    metadata = {"k": "x" * (MAX_METADATA_BYTES - 8)}

    error = assert_refused_at(with_(COMMAND_REQUEST, metadata=metadata), "metadata")

    assert str(MAX_METADATA_BYTES) in error.rule


def test_metadata_size_counts_bytes_not_characters() -> None:
    metadata = {"k": "é" * (MAX_METADATA_BYTES // 2)}  # half the limit in characters

    assert_refused_at(with_(COMMAND_REQUEST, metadata=metadata), "metadata")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=repr)
def test_metadata_numbers_must_be_json_numbers(value: float) -> None:
    assert_refused_at(with_(COMMAND_REQUEST, metadata={"x": value}), "metadata")


@pytest.mark.parametrize("key", ["", "k" * 129])
def test_metadata_keys_are_1_to_128_characters(key: str) -> None:
    assert_refused_at(with_(COMMAND_REQUEST, metadata={key: 1}), "metadata")


def test_metadata_values_are_scalars() -> None:
    assert_refused_within(with_(COMMAND_REQUEST, metadata={"nested": {"a": 1}}), "metadata")


@pytest.mark.parametrize("name", ["a\x00b", "bell\x07", "\x1b[31mred", "a\rb", "del\x7f"], ids=repr)
def test_a_name_with_control_characters_is_refused(name: str) -> None:
    assert_refused_at(with_(COMMAND_REQUEST, name=name), "name")


def test_no_control_character_at_all_is_accepted_in_a_name() -> None:
    """Every Unicode control character (category Cc: C0, DEL and C1) is refused in a name."""
    accepted = []
    for code in range(0xA0):
        char = chr(code)
        if unicodedata.category(char) != "Cc":
            continue
        try:
            SimulationRequest.parse(with_(COMMAND_REQUEST, name=f"run{char}name"))
        except InvalidRequest:
            continue
        accepted.append(char)

    assert accepted == [], f"control characters accepted in a name: {accepted!r}"


def test_a_name_over_200_characters_is_refused() -> None:
    assert_refused_at(with_(COMMAND_REQUEST, name="n" * 201), "name")


def test_every_rejected_value_is_reported_at_once() -> None:
    data = with_(
        COMMAND_REQUEST,
        name="x\x00",
        resources={"nodes": 0, "partition": "$(id)"},
        outputs=["../x"],
    )

    fields = {e.field for e in refusal(data)}

    assert {"name", "resources.nodes", "resources.partition"} <= fields
    assert any(f == "outputs" or f.startswith("outputs.") for f in fields)


# ---------------------------------------------------------------------------- digest

_SAFE_NAME = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}", fullmatch=True)
_SAFE_PART = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.@+=,-]{0,8}", fullmatch=True).filter(
    lambda p: p not in (".", "..")
)
_ARG = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
#: Text without control characters or line separators (refused in metadata).
_PRINTABLE = st.characters(exclude_categories=["Cc", "Cs", "Zl", "Zp"])
_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(_PRINTABLE, max_size=8),
)

REQUEST_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "kind": st.sampled_from(["simulation", "emodel-fitting", "job"]),
    "name": st.text(st.characters(categories=["L", "N", "Zs"]), max_size=12),
    "resources": st.fixed_dictionaries(
        {},
        optional={
            "nodes": st.integers(1, 4096),
            "tasks_per_node": st.integers(1, 1024),
            "cpus_per_task": st.integers(1, 1024),
            "memory_mb": st.integers(1, 10**6),
            "time_limit_minutes": st.integers(1, 14 * 24 * 60),
            "partition": _SAFE_NAME,
            "account": _SAFE_NAME,
        },
    ),
    "inputs": st.lists(
        st.one_of(
            _SAFE_PART.map(lambda p: f"https://kg.example/{p}"),
            st.lists(_SAFE_PART, min_size=1, max_size=3).map(lambda ps: "/" + "/".join(ps)),
        ),
        max_size=3,
        unique=True,
    ),
    "outputs": st.lists(
        st.lists(_SAFE_PART, min_size=1, max_size=3)
        .map("/".join)
        .filter(lambda p: not p.startswith("-")),
        max_size=3,
        unique=True,
    ),
    "metadata": st.dictionaries(st.text(_PRINTABLE, min_size=1, max_size=6), _SCALAR, max_size=4),
}

_WHAT_TO_RUN = st.one_of(
    st.fixed_dictionaries(
        {"command": st.lists(_ARG, min_size=1, max_size=4).map(lambda c: ["prog", *c])}
    ),
    st.fixed_dictionaries(
        {"script": st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1)}
    ),
)


@st.composite
def request_dicts(draw: st.DrawFn) -> dict[str, Any]:
    data = draw(st.fixed_dictionaries({}, optional=REQUEST_FIELDS))
    data.update(draw(_WHAT_TO_RUN))
    return data


def _shuffled(value: Any, rng: random.Random) -> Any:
    """The same JSON value, every object's keys inserted in a random order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: _shuffled(v, rng) for k, v in items}
    return value


@given(request_dicts(), st.randoms(use_true_random=False))
def test_digest_does_not_depend_on_key_order(data: dict[str, Any], rng: random.Random) -> None:
    first = SimulationRequest.parse(data)
    second = SimulationRequest.parse(_shuffled(data, rng))

    assert first == second
    assert first.digest() == second.digest()


def test_digest_is_equal_for_explicit_defaults() -> None:
    terse = SimulationRequest.parse({"command": ["prog"]})
    explicit = SimulationRequest.parse(
        {"command": ["prog"], "kind": "simulation", "resources": {"nodes": 1}, "outputs": []}
    )

    assert terse.digest() == explicit.digest()


@given(request_dicts(), st.data())
def test_digest_differs_when_any_field_differs(data: dict[str, Any], draws: st.DataObject) -> None:
    fields = {**REQUEST_FIELDS, "command": _WHAT_TO_RUN, "script": _WHAT_TO_RUN}
    changed_field = draws.draw(st.sampled_from(sorted(fields)), label="changed field")
    changed = dict(data)
    if changed_field in ("command", "script"):
        changed.pop("command", None)
        changed.pop("script", None)
        changed.update(draws.draw(_WHAT_TO_RUN, label="what to run"))
    else:
        changed[changed_field] = draws.draw(fields[changed_field], label="new value")
    first, second = SimulationRequest.parse(data), SimulationRequest.parse(changed)
    if first == second:  # the draw happened to give an equal request: nothing to compare
        return

    assert first.digest() != second.digest()


def test_digest_distinguishes_argument_boundaries() -> None:
    split = SimulationRequest.parse({"command": ["echo", "a", "b"]})
    joined = SimulationRequest.parse({"command": ["echo", "a b"]})

    assert split.digest() != joined.digest()


def test_digest_is_stable_across_releases() -> None:
    """Stored runs keep their request's digest: changing the recipe breaks idempotent replays."""
    req = SimulationRequest.parse({"command": ["prog", "--x"], "outputs": ["a.h5"]})

    assert req.digest() == DIGEST_OF_PROG_X_A_H5


DIGEST_OF_PROG_X_A_H5 = "d38292c2cd9e459a7224b1a0449050774f601dc0b54aa37118520f0e3f94e5fb"


# ---------------------------------------------------------------------------- metadata: no controls

#: C0 (tab and newline included), DEL, C1, and the Unicode line and paragraph separators.
REFUSED_IN_TEXT = [chr(c) for c in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]]


@pytest.mark.parametrize("char", REFUSED_IN_TEXT, ids=lambda c: f"U+{ord(c):04X}")
def test_a_metadata_value_with_a_control_character_is_refused_by_its_key(char: str) -> None:
    data = with_(COMMAND_REQUEST, metadata={"campaign": f"ca1{char}baseline", "seed": 42})

    assert [e.field for e in refusal(data)] == ["metadata.campaign"]


@pytest.mark.parametrize("char", REFUSED_IN_TEXT, ids=lambda c: f"U+{ord(c):04X}")
def test_a_metadata_key_with_a_control_character_is_refused_and_shown_escaped(char: str) -> None:
    data = with_(COMMAND_REQUEST, metadata={f"cam{char}paign": 1, "seed": 42})

    (error,) = refusal(data)

    assert error.field == f"metadata.cam\\u{ord(char):04x}paign"
    assert "key" in error.rule


def test_every_metadata_entry_with_a_control_character_is_named() -> None:
    metadata = {"a": "x\x00", "b\n": "y", "c": "fine", "d": 1, "e": "\u2028"}

    fields = {e.field for e in refusal(with_(COMMAND_REQUEST, metadata=metadata))}

    assert fields == {"metadata.a", "metadata.b\\u000a", "metadata.e"}


def test_metadata_keeps_printable_unicode() -> None:
    metadata = {"région": "Hippocampe CA1 — 10 s", "note": "µ\u00a0\u03b1 🧠"}

    assert SimulationRequest.parse(with_(COMMAND_REQUEST, metadata=metadata)).metadata == metadata


@pytest.mark.parametrize("char", ["\u2028", "\u2029"], ids=["U+2028", "U+2029"])
def test_a_name_with_a_line_separator_is_refused(char: str) -> None:
    assert_refused_at(with_(COMMAND_REQUEST, name=f"run{char}name"), "name")


# ---------------------------------------------------------------------------- strict integers

COUNTS = ["nodes", "tasks_per_node", "cpus_per_task", "memory_mb", "time_limit_minutes"]


@pytest.mark.parametrize("value", ["4", "0x4", True, False, 4.0, 1e3], ids=repr)
@pytest.mark.parametrize("field", COUNTS)
def test_a_count_must_be_an_integer_not_a_string_a_boolean_or_a_float(
    field: str, value: object
) -> None:
    error = assert_refused_at(with_resources(**{field: value}), f"resources.{field}")

    assert "integer" in error.rule


@pytest.mark.parametrize("field", COUNTS)
def test_a_count_that_is_an_integer_is_accepted(field: str) -> None:
    assert getattr(SimulationRequest.parse(with_resources(**{field: 4})).resources, field) == 4


def test_metadata_values_keep_their_json_type() -> None:
    metadata = {"text": "4", "flag": True, "real": 4.0, "count": 4, "none": None}

    parsed = SimulationRequest.parse(with_(COMMAND_REQUEST, metadata=metadata)).metadata

    assert [(k, type(v)) for k, v in parsed.items()] == [(k, type(v)) for k, v in metadata.items()]
