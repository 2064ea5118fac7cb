"""What a batch script asks of the process scheduler: its ``#SBATCH`` directives, read as Slurm
reads them (the lines at the top of the script, before its first command).

Honoured: the time limit, the output and error files (``%j``, ``%x`` and ``%%`` expanded), the
open mode, and ``--hold``. Refused, with the reason: more than one node, job arrays and
dependencies, which one machine cannot give. Everything else (partition, account, memory, tasks
and CPUs: the batch script runs once, as on Slurm's first node) is accepted and has no effect.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass

from obp_workflow.core.errors import SubmissionRejected

_SHORT = {"-t": "time", "-N": "nodes", "-o": "output", "-e": "error", "-H": "hold"}
_SHORT |= {"-a": "array", "-d": "dependency", "-D": "chdir", "-J": "job-name"}
_FLAGS = {"hold"}  # options without a value
_REFUSED = {
    "array": "job arrays are not supported by the local process scheduler",
    "dependency": "job dependencies are not supported by the local process scheduler",
}
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_PATTERN = re.compile(r"%(.)")


@dataclass(frozen=True)
class JobOptions:
    time_limit_seconds: float | None
    output: str  # absolute, inside the run folder
    error: str | None
    append: bool
    hold: bool


def sbatch_options(script: str) -> Iterator[tuple[str, str | None]]:
    """``(name, value)`` of every ``#SBATCH`` option, long names without dashes."""
    lines = script.splitlines()
    if lines and lines[0].startswith("#!"):
        lines = lines[1:]
    for line in lines:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return  # the first command ends the directives
        if not stripped.startswith("#SBATCH"):
            continue
        words = stripped[len("#SBATCH") :].split()
        i = 0
        while i < len(words):
            word = words[i]
            if word.startswith("#"):
                break  # a comment after the options
            if word.startswith("--"):
                name, eq, value = word[2:].partition("=")
                if not eq and name not in _FLAGS and i + 1 < len(words):
                    i += 1
                    value = words[i]
                yield name, value if (eq or name not in _FLAGS) else None
            elif word[:2] in _SHORT:
                name = _SHORT[word[:2]]
                value = word[2:]
                if not value and name not in _FLAGS and i + 1 < len(words):
                    i += 1
                    value = words[i]
                yield name, value if name not in _FLAGS else None
            i += 1


def parse_time_limit(text: str) -> float | None:
    """Slurm's ``--time`` in seconds: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``,
    ``D-H:M:S``; None for no limit (``0``, ``UNLIMITED``, ``INFINITE``)."""
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    match = _TIME.fullmatch(text)
    if not match:
        raise SubmissionRejected(f"invalid time limit {text!r} in the job script")
    days, first, second, third = match.groups()
    numbers = [int(first)] + [int(n) for n in (second, third) if n is not None]
    if days is not None:  # D-H[:M[:S]]
        hours, minutes, seconds = [*numbers, 0, 0][:3]
        total = ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    elif len(numbers) == 1:  # M
        total = numbers[0] * 60
    elif len(numbers) == 2:  # M:S
        total = numbers[0] * 60 + numbers[1]
    else:  # H:M:S
        total = (numbers[0] * 60 + numbers[1]) * 60 + numbers[2]
    return float(total) if total > 0 else None


def _nodes(text: str) -> None:
    low = text.split("-", 1)[0]
    if not low.isdigit():
        raise SubmissionRejected(f"invalid node count {text!r} in the job script")
    if int(low) > 1:
        raise SubmissionRejected(
            f"the job asks for {low} nodes; the local process scheduler runs jobs on one machine"
        )


def _file(template: str, run_folder: str, job_id: str, tag: str) -> str:
    def expand(match: re.Match[str]) -> str:
        code = match.group(1)
        if code == "%":
            return "%"
        if code == "j":
            return job_id
        if code == "x":
            return tag
        raise SubmissionRejected(f"the file pattern %{code} is not supported (only %j, %x, %%)")

    path = posixpath.normpath(posixpath.join(run_folder, _PATTERN.sub(expand, template)))
    if not path.startswith(run_folder.rstrip("/") + "/"):
        raise SubmissionRejected(f"the job's output file {template!r} is outside its run folder")
    return path


def job_options(script: str, run_folder: str, job_id: str, tag: str) -> JobOptions:
    """The options of the script that the scheduler honours; SubmissionRejected for one it
    cannot honour. Without ``--output``, Slurm's default ``slurm-%j.out`` in the run folder."""
    time_limit: float | None = None
    output, error, append, hold = "slurm-%j.out", None, False, False
    for name, value in sbatch_options(script):
        if name in _REFUSED:
            raise SubmissionRejected(_REFUSED[name])
        if name == "hold":
            hold = True
            continue
        if value is None or value == "":
            raise SubmissionRejected(f"#SBATCH --{name} needs a value")
        if name == "time":
            time_limit = parse_time_limit(value)
        elif name == "nodes":
            _nodes(value)
        elif name == "output":
            output = value
        elif name == "error":
            error = value
        elif name == "open-mode":
            if value not in ("append", "truncate"):
                raise SubmissionRejected(f"invalid --open-mode {value!r} in the job script")
            append = value == "append"
    return JobOptions(
        time_limit_seconds=time_limit,
        output=_file(output, run_folder, job_id, tag),
        error=_file(error, run_folder, job_id, tag) if error is not None else None,
        append=append,
        hold=hold,
    )
