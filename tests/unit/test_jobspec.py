"""The batch job of a run: quoting, directives, files, and a real execution with bash."""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from obp_workflow.core.cluster import SAFE_PATH, ClusterHandle, SecretRef
from obp_workflow.core.errors import InvalidRequest
from obp_workflow.core.jobspec import (
    JOB_SCRIPT,
    LOG_FILE,
    REQUEST_FILE,
    USER_SCRIPT,
    JobSpec,
    build_job_spec,
    check_run_id,
)
from obp_workflow.core.request import SimulationRequest

from .factories import RUN_ID, cluster, header

#: Every option the service may pass to sbatch, and nothing else.
ALLOWED_OPTIONS = {
    "job-name",
    "comment",
    "chdir",
    "output",
    "open-mode",
    "nodes",
    "ntasks-per-node",
    "cpus-per-task",
    "time",
    "mem",
    "partition",
    "account",
}
_DIRECTIVE = re.compile(r"#SBATCH --(?P<option>[a-z-]+)=(?P<value>[A-Za-z0-9_./=-]+)")

# Arbitrary text a scientist might pass, hostile shapes over-represented.
_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
_HOSTILE = st.sampled_from(
    [
        "$(touch pwned)",
        "`touch pwned`",
        "'; touch pwned; '",
        '"; touch pwned; "',
        "a\nb",
        "x\n#SBATCH --uid=0",
        "\n#SBATCH --partition=evil\n",
        "--uid=0",
        "-- --",
        "; rm -rf / ;",
        "../../etc/passwd",
        "${IFS}",
        "$HOME",
        "!!",
        "*",
        "~",
        "\\",
        "'",
        '"',
        "",
        " ",
        "\t",
        "%s%n",
        "é中文🧠",
        "x" * 4096,
    ]
)
ARG = st.one_of(_HOSTILE, _TEXT)
SCHEDULER_NAME = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", fullmatch=True)

#: Words bash reads as syntax, not as a program, when they stand unquoted first on a line.
SHELL_SYNTAX_WORDS = {
    "if",
    "then",
    "elif",
    "else",
    "fi",
    "case",
    "esac",
    "for",
    "select",
    "while",
    "until",
    "do",
    "done",
    "function",
    "time",
    "coproc",
    "in",
}


def _is_plain_program(word: str) -> bool:
    """Not a shape bash treats specially as the first word (covered by its own test below)."""
    return word not in SHELL_SYNTAX_WORDS and not re.match(r"[A-Za-z_][A-Za-z0-9_]*\+?=", word)


PROGRAM = st.one_of(
    st.sampled_from(["printf", "neurodamus", "./run.sh", "/usr/bin/env", "python3"]),
    ARG.filter(lambda w: w != "" and not w.startswith("-") and _is_plain_program(w)),
)


def spec_of(
    req: dict[str, Any], *, run_id: str = RUN_ID, handle: ClusterHandle | None = None
) -> JobSpec:
    return build_job_spec(
        header(SimulationRequest.parse(req), run_id), handle if handle else cluster()
    )


def sbatch_directives(script: str) -> list[str]:
    """The ``#SBATCH`` lines sbatch reads: those before the first non-comment, non-blank line."""
    lines = script.split("\n")
    assert lines[0] == "#!/bin/bash"
    found = []
    for line in lines[1:]:
        if line.strip() and not line.startswith("#"):
            break
        if line.startswith("#SBATCH"):
            found.append(line)
    return found


def directive_values(script: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in sbatch_directives(script):
        match = _DIRECTIVE.fullmatch(line)
        assert match, f"unexpected directive line {line!r}"
        assert match["option"] not in values, f"option given twice: {line!r}"
        values[match["option"]] = match["value"]
    return values


def command_part(script: str) -> str:
    """What follows the service's own preamble: the user's command line (maybe many lines)."""
    marker = "export OBP_RUN_FOLDER="
    start = script.index(marker)
    return script[script.index("\n", start) + 1 :]


def bash_syntax_error(script: str) -> str:
    """bash's complaint about ``script`` (``bash -n``), or "" when it parses."""
    result = subprocess.run(
        ["bash", "-n"], input=script.encode(), capture_output=True, timeout=30, check=False
    )
    return result.stderr.decode(errors="replace") if result.returncode else ""


def write_spec(spec: JobSpec) -> Path:
    folder = Path(spec.run_folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in spec.files.items():
        (folder / name).write_text(content, encoding="utf-8")
    return folder


def run_job(
    spec: JobSpec, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run the job script with bash, as Slurm would on the node (no Slurm needed)."""
    folder = write_spec(spec)
    return subprocess.run(
        ["bash", str(folder / spec.script)],
        cwd=cwd,
        capture_output=True,
        timeout=30,
        check=False,
        env=env,
    )


def local_cluster(root: Path) -> ClusterHandle:
    runs_root = str(root / "runs")
    assert SAFE_PATH.fullmatch(runs_root), f"the test's temporary folder is not safe: {runs_root}"
    return cluster(runs_root=runs_root)


# ---------------------------------------------------------------------------- quoting


@given(PROGRAM, st.lists(ARG, max_size=6))
def test_job_script_is_valid_bash_for_any_arguments(program: str, args: list[str]) -> None:
    spec = spec_of({"command": [program, *args]})

    assert bash_syntax_error(spec.files[JOB_SCRIPT]) == ""


@given(PROGRAM, st.lists(ARG, max_size=6))
def test_command_line_quoting_round_trips(program: str, args: list[str]) -> None:
    argv = [program, *args]
    spec = spec_of({"command": argv})

    assert shlex.split(command_part(spec.files[JOB_SCRIPT])) == argv


@given(args=st.lists(ARG, min_size=1, max_size=6))
def test_the_program_receives_exactly_the_arguments(
    tmp_path_factory: pytest.TempPathFactory, args: list[str]
) -> None:
    root = tmp_path_factory.mktemp("exec")
    handle = local_cluster(root)
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    spec = build_job_spec(
        header(SimulationRequest.parse({"command": ["printf", "%s\\0", *args]})), handle
    )

    result = run_job(spec, cwd=elsewhere)

    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split("\0")[:-1] == args
    assert not list(root.rglob("pwned"))


@pytest.mark.parametrize(
    "hostile",
    [
        "$(touch pwned)",
        "`touch pwned`",
        "'; touch pwned; echo '",
        '"; touch pwned; echo "',
        "x\ntouch pwned",
        "x; touch pwned",
        "x && touch pwned",
        "x | touch pwned",
        "$(touch${IFS}pwned)",
        "${HOME}",
        "*",
        "!!",
        "-n",
        "--uid=0",
        "é中文🧠",
    ],
    ids=repr,
)
def test_a_hostile_argument_is_printed_verbatim_and_runs_nothing(
    tmp_path: Path, hostile: str
) -> None:
    handle = local_cluster(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    spec = build_job_spec(
        header(SimulationRequest.parse({"command": ["printf", "%s\\n", hostile]})), handle
    )

    result = run_job(spec, cwd=elsewhere)

    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == hostile + "\n"
    assert not list(tmp_path.rglob("pwned")), "an injected command ran"


@pytest.mark.parametrize("program", ["if", "while", "do", "function", "time", "coproc", "A=1"])
def test_a_program_named_like_shell_syntax_is_run_as_that_program(
    tmp_path: Path, program: str
) -> None:
    """The command is an argv: its first word is a program, whatever it is called.

    Unquoted, ``if``/``while``/... are bash keywords (a syntax error), ``time``/``coproc``
    change what runs, and ``A=1`` is a variable assignment that runs nothing.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "ran"
    executable = bin_dir / program
    executable.write_text(f'#!/bin/sh\necho "$@" > {marker}\n')
    executable.chmod(executable.stat().st_mode | stat.S_IXUSR)
    spec = build_job_spec(
        header(SimulationRequest.parse({"command": [program, "arg"]})), local_cluster(tmp_path)
    )

    result = run_job(
        spec, cwd=tmp_path, env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    )

    assert result.returncode == 0, result.stderr
    assert marker.read_text() == "arg\n"


def test_script_form_runs_the_user_script_in_the_run_folder(tmp_path: Path) -> None:
    handle = local_cluster(tmp_path)
    body = 'printf "%s|%s|%s" "$OBP_RUN_ID" "$OBP_RUN_FOLDER" "$PWD" > where.txt\n'
    spec = build_job_spec(header(SimulationRequest.parse({"script": body})), handle)

    result = run_job(spec, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    folder = Path(spec.run_folder)
    assert (folder / "where.txt").read_text() == f"{RUN_ID}|{folder}|{folder}"


# ---------------------------------------------------------------------------- directives

#: Control characters and line separators, which a request refuses in its metadata.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@given(
    args=st.lists(ARG, max_size=4),
    name=st.one_of(st.none(), st.text(st.characters(categories=["L", "N", "P", "S"]))),
    metadata=st.dictionaries(
        st.text(min_size=1, max_size=8).filter(lambda k: not _CONTROL.search(k)),
        ARG.map(lambda v: _CONTROL.sub("", v)),  # the request refuses them in metadata
        max_size=3,
    ),
    resources=st.fixed_dictionaries(
        {},
        optional={
            "nodes": st.integers(1, 4096),
            "tasks_per_node": st.integers(1, 1024),
            "cpus_per_task": st.integers(1, 1024),
            "memory_mb": st.integers(1, 4 * 1024 * 1024),
            "time_limit_minutes": st.integers(1, 14 * 24 * 60),
            "partition": SCHEDULER_NAME,
            "account": SCHEDULER_NAME,
        },
    ),
    cluster_partition=st.one_of(st.none(), SCHEDULER_NAME),
    cluster_account=st.one_of(st.none(), SCHEDULER_NAME),
)
def test_directives_are_the_fixed_set_with_validated_values_only(
    args: list[str],
    name: str | None,
    metadata: dict[str, str],
    resources: dict[str, Any],
    cluster_partition: str | None,
    cluster_account: str | None,
) -> None:
    data: dict[str, Any] = {"command": ["prog", *args], "metadata": metadata}
    data["resources"] = resources
    if name is not None:
        data["name"] = name
    req = SimulationRequest.parse(data)
    handle = cluster(partition=cluster_partition, account=cluster_account)
    spec = build_job_spec(header(req), handle)
    folder = handle.run_folder(RUN_ID)

    values = directive_values(spec.files[JOB_SCRIPT])

    res = req.resources
    expected = {
        "job-name": f"obp-{RUN_ID}",
        "comment": f"obp-{RUN_ID}",
        "chdir": folder,
        "output": f"{folder}/{LOG_FILE}",
        "open-mode": "append",
        "nodes": str(res.nodes),
        "ntasks-per-node": str(res.tasks_per_node),
        "cpus-per-task": str(res.cpus_per_task),
        "time": str(res.time_limit_minutes),
    }
    if res.memory_mb is not None:
        expected["mem"] = f"{res.memory_mb}M"
    if res.partition or cluster_partition:
        expected["partition"] = res.partition or cluster_partition  # type: ignore[assignment]
    if res.account or cluster_account:
        expected["account"] = res.account or cluster_account  # type: ignore[assignment]
    assert values == expected
    assert set(values) <= ALLOWED_OPTIONS


def test_a_request_partition_overrides_the_clusters_default() -> None:
    handle = cluster(partition="default-part", account="default-acct")

    own = directive_values(
        build_job_spec(
            header(SimulationRequest.parse({"command": ["p"], "resources": {"partition": "gpu"}})),
            handle,
        ).files[JOB_SCRIPT]
    )
    default = directive_values(build_job_spec(header(), handle).files[JOB_SCRIPT])

    assert (own["partition"], own["account"]) == ("gpu", "default-acct")
    assert (default["partition"], default["account"]) == ("default-part", "default-acct")


def test_no_partition_or_account_directive_when_nobody_names_one() -> None:
    values = directive_values(build_job_spec(header(), cluster()).files[JOB_SCRIPT])

    assert "partition" not in values
    assert "account" not in values


# ---------------------------------------------------------------------------- tag and folders


def test_the_tag_is_the_run_id_prefixed_with_obp() -> None:
    spec = build_job_spec(header(run_id="abcdef12-3456"), cluster())

    assert spec.tag == "obp-abcdef12-3456"
    values = directive_values(spec.files[JOB_SCRIPT])
    assert values["job-name"] == values["comment"] == "obp-abcdef12-3456"


def test_log_and_working_directory_are_inside_the_run_folder() -> None:
    handle = cluster(runs_root="/home/sim/runs")
    spec = build_job_spec(header(), handle)

    assert spec.run_folder == f"/home/sim/runs/{RUN_ID}"
    values = directive_values(spec.files[JOB_SCRIPT])
    assert values["chdir"] == spec.run_folder
    assert values["output"] == spec.log_path == f"{spec.run_folder}/{LOG_FILE}"
    assert spec.script_path == f"{spec.run_folder}/{JOB_SCRIPT}"
    shell_lines = [shlex.split(line, comments=True) for line in spec.files[JOB_SCRIPT].split("\n")]
    assert ["cd", spec.run_folder] in shell_lines


def test_the_request_file_holds_the_request_as_json() -> None:
    req = SimulationRequest.parse(
        {"command": ["p", "$(id)"], "metadata": {"k": "'\"`"}, "outputs": ["a.h5"]}
    )
    spec = build_job_spec(header(req), cluster())

    stored = json.loads(spec.files[REQUEST_FILE])

    assert stored["run_id"] == RUN_ID
    assert SimulationRequest.parse(stored["request"]) == req


@given(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1),
)
def test_a_script_body_is_stored_verbatim_and_never_put_in_the_job_script(
    body: str, other_body: str
) -> None:
    spec = spec_of({"script": body})
    other = spec_of({"script": other_body})

    assert spec.files[USER_SCRIPT] == body
    # The job script does not depend on the body at all: it cannot carry any of it.
    assert spec.files[JOB_SCRIPT] == other.files[JOB_SCRIPT]
    assert shlex.split(command_part(spec.files[JOB_SCRIPT])) == ["bash", f"./{USER_SCRIPT}"]


def test_the_command_form_has_no_user_script_file() -> None:
    spec = build_job_spec(header(), cluster())

    assert set(spec.files) == {JOB_SCRIPT, REQUEST_FILE}


# ---------------------------------------------------------------------------- run ids


@pytest.mark.parametrize(
    "run_id",
    [
        "",
        "short",
        "abcdefg",
        "Abcdefgh",
        "-abcdefgh",
        "abcd_efgh",
        "abcd efgh",
        "abcdefgh;id",
        "../../etc",
        "abcdefgh/..",
        "a" * 65,
        "abcdefgh\n",
        "abcdefgh\nid",
    ],
    ids=repr,
)
def test_an_invalid_run_id_is_refused(run_id: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_run_id(run_id)
    assert [e.field for e in caught.value.errors] == ["run_id"]

    with pytest.raises(InvalidRequest):
        build_job_spec(header(run_id=run_id), cluster())


@pytest.mark.parametrize("run_id", ["abcdefgh", "0123456789abcdef", "run-2024-05-01-x", "a" * 64])
def test_a_valid_run_id_is_accepted(run_id: str) -> None:
    assert check_run_id(run_id) == run_id
    assert build_job_spec(header(run_id=run_id), cluster()).run_folder.endswith("/" + run_id)


# ---------------------------------------------------------------------------- secrets


def test_the_spec_never_carries_the_clusters_key_references() -> None:
    user_key = SecretRef("arn:aws:secretsmanager:eu-west-1:123456789012:secret:user-KEY-abc")
    admin_key = SecretRef("arn:aws:secretsmanager:eu-west-1:123456789012:secret:admin-KEY-xyz")
    handle = cluster(user_key=user_key, admin_key=admin_key, partition="prod", account="p134")
    requests = [
        SimulationRequest.parse(
            {"command": ["neurodamus", "--x"], "metadata": {"a": 1}, "outputs": ["o.h5"]}
        ),
        SimulationRequest.parse({"script": "srun neurodamus\n", "inputs": ["/obi/data/x"]}),
    ]

    for req in requests:
        spec = build_job_spec(header(req), handle)
        texts = [*spec.files.values(), *spec.files, repr(spec)]
        for secret in (user_key.ref, admin_key.ref):
            assert not any(secret in text for text in texts)
