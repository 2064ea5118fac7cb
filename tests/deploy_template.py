"""Reading ``deploy/template.yaml`` in tests: the template (cfn-lint's loader, which knows the
``!Ref``/``!Sub``/``!GetAtt`` tags and keeps line numbers), its intrinsic functions resolved for
given parameters, and the IAM wildcard convention.

The wildcard convention: an IAM action holding a ``*``, or a ``Resource: "*"``, must be justified
by a comment ``# star: <reason>`` on the same line or alone on the line right above it.
``NotAction``/``NotResource`` and managed policies (whose contents the template does not show)
are refused outright, and so is a SAM function without its own ``Role`` (SAM would generate one
with a managed policy).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cfnlint.decode import cfn_yaml

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "deploy" / "template.yaml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"

_STAR_COMMENT = re.compile(r"#\s*star:\s*\S")
_POLICY_HOLDERS = ("AWS::IAM::Role", "AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")


def load(path: Path = TEMPLATE) -> dict[str, Any]:
    template: dict[str, Any] = cfn_yaml.load(str(path))
    return template


def load_text(text: str, folder: Path) -> dict[str, Any]:
    path = folder / "template.yaml"
    path.write_text(text)
    return load(path)


# ================================================================ intrinsic functions


class Resolver:
    """Resolves a template's values for given parameters (defaults fill the rest), with the
    physical names (``Ref``) and attributes (``GetAtt``) of resources given by the test."""

    def __init__(
        self,
        template: Mapping[str, Any],
        parameters: Mapping[str, str | list[str]],
        *,
        refs: Mapping[str, str] | None = None,
        attributes: Mapping[str, str] | None = None,
        region: str = "eu-north-1",
        account: str = "123456789012",
        stack: str = "obp",
    ) -> None:
        self.template = template
        declared = template.get("Parameters", {})
        self.values: dict[str, Any] = {}
        for name, spec in declared.items():
            if name in parameters:
                self.values[name] = parameters[name]
            elif "Default" in spec:
                self.values[name] = str(spec["Default"])
        unknown = set(parameters) - set(declared)
        assert not unknown, f"no such parameters: {unknown}"
        self.values.update(
            {
                "AWS::Region": region,
                "AWS::AccountId": account,
                "AWS::StackName": stack,
                "AWS::Partition": "aws",
                "AWS::URLSuffix": "amazonaws.com",
            }
        )
        self.refs = dict(refs or {})
        self.attributes = dict(attributes or {})

    def missing(self) -> list[str]:
        return sorted(set(self.template.get("Parameters", {})) - set(self.values))

    def condition(self, name: str) -> bool:
        return bool(self._condition(self.template["Conditions"][name]))

    def _condition(self, expr: Any) -> Any:
        if isinstance(expr, Mapping) and len(expr) == 1:
            ((fn, arg),) = expr.items()
            if fn == "Fn::Equals":
                return self.resolve(arg[0]) == self.resolve(arg[1])
            if fn == "Fn::Not":
                return not self._condition(arg[0])
            if fn == "Fn::And":
                return all(self._condition(a) for a in arg)
            if fn == "Fn::Or":
                return any(self._condition(a) for a in arg)
            if fn == "Condition":
                return self.condition(arg)
        return self.resolve(expr)

    def ref(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        if name in self.refs:
            return self.refs[name]
        raise KeyError(f"Ref {name}: not a parameter, and no physical name was given")

    def resolve(self, value: Any) -> Any:
        """``value`` with every intrinsic function evaluated; ``AWS::NoValue`` entries dropped."""
        if isinstance(value, list):
            items = [self.resolve(v) for v in value]
            return [v for v in items if v is not _NO_VALUE]
        if not isinstance(value, Mapping):
            return str(value) if isinstance(value, str) else value
        if len(value) == 1:
            ((fn, arg),) = value.items()
            if fn == "Ref":
                return _NO_VALUE if arg == "AWS::NoValue" else self.ref(arg)
            if fn == "Fn::GetAtt":
                key = ".".join(arg) if isinstance(arg, list) else arg
                return self.attributes[key]
            if fn == "Fn::Sub":
                text, extra = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
                extra = {k: self.resolve(v) for k, v in extra.items()}
                return re.sub(r"\$\{([^}!]+)\}", lambda m: self._sub(m.group(1), extra), text)
            if fn == "Fn::Join":
                return arg[0].join(str(v) for v in self.resolve(arg[1]))
            if fn == "Fn::If":
                return self.resolve(arg[1] if self.condition(arg[0]) else arg[2])
            if fn == "Fn::Select":
                return self.resolve(arg[1])[int(self.resolve(arg[0]))]
            if fn == "Fn::Split":
                return str(self.resolve(arg[1])).split(arg[0])
        resolved = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not _NO_VALUE}

    def _sub(self, name: str, extra: Mapping[str, Any]) -> str:
        if name in extra:
            return str(extra[name])
        if "." in name and not name.startswith("AWS::"):
            return str(self.attributes[name])
        value = self.ref(name)
        return ",".join(value) if isinstance(value, list) else str(value)


_NO_VALUE = object()


# ================================================================ the IAM wildcard convention


def _statements(document: Any) -> Iterator[Mapping[str, Any]]:
    statements = document.get("Statement", []) if isinstance(document, Mapping) else []
    for statement in statements if isinstance(statements, list) else [statements]:
        yield from _branches(statement)


def _branches(value: Any) -> Iterator[Any]:
    """Both branches of an ``Fn::If`` (every statement the template may produce)."""
    if isinstance(value, Mapping) and list(value) == ["Fn::If"]:
        for branch in value["Fn::If"][1:]:
            yield from _branches(branch)
    elif not (isinstance(value, Mapping) and value.get("Ref") == "AWS::NoValue"):
        yield value


def _policy_documents(name: str, resource: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    kind = resource.get("Type")
    properties = resource.get("Properties", {})
    if kind == "AWS::IAM::Role":
        for policy in properties.get("Policies", []):
            yield f"{name}/{policy.get('PolicyName')}", policy.get("PolicyDocument")
    elif kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        yield name, properties.get("PolicyDocument")
    elif kind == "AWS::Serverless::Function":
        for policy in properties.get("Policies", []) or []:
            yield f"{name}/Policies", policy


def _justified(node: Any, lines: list[str]) -> bool:
    mark = getattr(node, "start_mark", None)
    if mark is None:
        return False
    here = lines[mark.line]
    above = lines[mark.line - 1].strip() if mark.line > 0 else ""
    return bool(_STAR_COMMENT.search(here)) or (
        above.startswith("#") and bool(_STAR_COMMENT.match(above))
    )


def star_violations(path: Path = TEMPLATE) -> list[str]:
    """Every unjustified wildcard of the template's IAM policies, one line each."""
    template = load(path)
    lines = path.read_text().splitlines()
    problems: list[str] = []
    for name, resource in template.get("Resources", {}).items():
        properties = resource.get("Properties", {})
        if resource.get("Type") in (*_POLICY_HOLDERS, "AWS::Serverless::Function") and (
            properties.get("ManagedPolicyArns")
        ):
            problems.append(f"{name}: managed policies are not allowed (their content is hidden)")
        if resource.get("Type") == "AWS::Serverless::Function" and "Role" not in properties:
            problems.append(f"{name}: no Role (SAM would generate one with a managed policy)")
        for where, document in _policy_documents(name, resource):
            if not isinstance(document, Mapping):
                problems.append(f"{where}: a policy template or reference, not a statement list")
                continue
            for statement in _statements(document):
                for key in ("NotAction", "NotResource"):
                    if key in statement:
                        problems.append(f"{where}: {key} is not allowed")
                actions = statement.get("Action", [])
                for action in actions if isinstance(actions, list) else [actions]:
                    if isinstance(action, str) and "*" in action and not _justified(action, lines):
                        problems.append(f"{where}: action {action!r} without '# star: <reason>'")
                resources = statement.get("Resource", [])
                for res in resources if isinstance(resources, list) else [resources]:
                    if res == "*" and not _justified(res, lines):
                        problems.append(f"{where}: Resource '*' without '# star: <reason>'")
    return problems
