"""The provenance of a run as JSON-LD documents, and the ids they are written at. No I/O.

Ids are derived from the run, so registering again updates and never duplicates (the scheme of
``adapters/fake/knowledge_graph.py``; ``id_base`` defaults to its base)::

    activity  {id_base}/{virtual_lab_id}/{project_id}/runs/{run_id}
    entity    {activity}/outputs/{relative_path}
    file      {entity}/file

(``relative_path`` keeps its ``/``; any character that is not safe in an IRI path is
percent-encoded, which the request validation makes moot today.)

The documents carry an inline ``@context`` (PROV-O, schema.org, neuroshapes terms and the
service's own ``obp:`` vocabulary), so Delta needs no remote context to expand them:

- the activity: ``@type`` [Activity, WorkflowExecution] (``prov:Activity``,
  ``nsg:WorkflowExecution``), ``used`` (the run's configuration and its inputs), ``generated``
  (the entities), ``wasAssociatedWith`` the service (a ``prov:SoftwareAgent``),
  ``wasAttributedTo`` the requesting user (the Nexus user IRI), ``startedAtTime``,
  ``endedAtTime``, ``status`` Done, ``clusterName``, ``jobId``, ``exitCode`` (when known) and
  ``elapsed`` (xsd:duration between the start and the end the service observed), and
  ``slurmAccounting`` (the scheduler's own record: ``nodes``, ``nodeList``, ``elapsed``,
  ``exitCode``, ``signal``, ``state``, ``start``/``end`` as Slurm printed them);
- one entity per output: [Entity, Dataset], ``wasGeneratedBy`` the activity, ``distribution``
  a ``DataDownload`` with ``contentUrl`` (the Nexus file's address; the S3 location for an
  object outside the Nexus data bucket), ``contentSize`` (bytes), ``digest`` (SHA-256) and
  ``encodingFormat``; for a linked object also ``atLocation`` (its ``s3://`` location).
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import posixpath
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.jobs import JobAccounting
from obp_workflow.core.sync import SyncedFile
from obp_workflow.ports.knowledge_graph import RunProvenance

#: The vocabulary of the provenance. Inline, so that Delta resolves no remote context.
CONTEXT: dict[str, Any] = {
    "@vocab": "https://openbrainplatform.org/workflow/vocab/",
    "obp": "https://openbrainplatform.org/workflow/vocab/",
    "prov": "http://www.w3.org/ns/prov#",
    "nsg": "https://neuroshapes.org/",
    "schema": "http://schema.org/",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "Activity": "prov:Activity",
    "Entity": "prov:Entity",
    "Agent": "prov:Agent",
    "SoftwareAgent": "prov:SoftwareAgent",
    "Person": "schema:Person",
    "WorkflowExecution": "nsg:WorkflowExecution",
    "Dataset": "schema:Dataset",
    "DataDownload": "schema:DataDownload",
    "RunConfiguration": "obp:RunConfiguration",
    "used": {"@id": "prov:used", "@type": "@id"},
    "generated": {"@id": "prov:generated", "@type": "@id"},
    "wasGeneratedBy": {"@id": "prov:wasGeneratedBy", "@type": "@id"},
    "wasAssociatedWith": {"@id": "prov:wasAssociatedWith", "@type": "@id"},
    "wasAttributedTo": {"@id": "prov:wasAttributedTo", "@type": "@id"},
    "startedAtTime": {"@id": "prov:startedAtTime", "@type": "xsd:dateTime"},
    "endedAtTime": {"@id": "prov:endedAtTime", "@type": "xsd:dateTime"},
    "status": "nsg:status",
    "name": "schema:name",
    "identifier": "schema:identifier",
    "distribution": "schema:distribution",
    "contentUrl": {"@id": "schema:contentUrl", "@type": "@id"},
    "Location": "prov:Location",
    "atLocation": "prov:atLocation",
    "location": {"@id": "obp:location", "@type": "@id"},
    "contentSize": "schema:contentSize",
    "encodingFormat": "schema:encodingFormat",
    "value": "schema:value",
    "unitCode": "schema:unitCode",
    "digest": "nsg:digest",
    "algorithm": "nsg:algorithm",
    "exitCode": {"@id": "obp:exitCode", "@type": "xsd:integer"},
    "SlurmAccounting": "obp:SlurmAccounting",
    "slurmAccounting": "obp:slurmAccounting",
    "nodes": {"@id": "obp:nodes", "@type": "xsd:integer"},
    "signal": {"@id": "obp:signal", "@type": "xsd:integer"},
    "elapsed": {"@id": "obp:elapsed", "@type": "xsd:duration"},
    "command": {"@id": "obp:command", "@container": "@list"},
}

_MEDIA_TYPES = {
    ".dat": "application/octet-stream",
    ".bin": "application/octet-stream",
    ".h5": "application/x-hdf5",
    ".hdf5": "application/x-hdf5",
    ".nwb": "application/x-hdf5",
    ".json": "application/json",
    ".csv": "text/csv",
    ".txt": "text/plain",
    ".log": "text/plain",
    ".out": "text/plain",
    ".err": "text/plain",
}
_ALGORITHMS = {"sha256": "SHA-256", "sha1": "SHA-1", "sha512": "SHA-512", "md5": "MD5"}


# ==================================================================== ids


def activity_id(base: str, project: ProjectRef, run_id: str) -> str:
    return f"{base.rstrip('/')}/{project.virtual_lab_id}/{project.project_id}/runs/{run_id}"


def entity_id(base: str, project: ProjectRef, run_id: str, relative_path: str) -> str:
    path = quote(relative_path, safe="/@+=,;:!$&'()*~")
    return f"{activity_id(base, project, run_id)}/outputs/{path}"


def file_id(base: str, project: ProjectRef, run_id: str, relative_path: str) -> str:
    return entity_id(base, project, run_id, relative_path) + "/file"


def user_iri(base: str, realm: str, username: str) -> str:
    """A user as Nexus names users (``base``: Delta's public base; ``username``: the user's
    preferred_username in the realm)."""
    return f"{base}/realms/{realm}/users/{quote(username, safe='')}"


def media_type_of(relative_path: str) -> str:
    ext = posixpath.splitext(relative_path)[1].lower()
    return (
        _MEDIA_TYPES.get(ext)
        or mimetypes.guess_type(relative_path)[0]
        or ("application/octet-stream")
    )


def ids_of(value: object) -> list[str]:
    """Ids from a JSON-LD value: a string, a node ``{"@id"}``, or a list of them (Delta
    compacts a one-element list to its element)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        found = value.get("@id")
        return [found] if isinstance(found, str) else []
    if isinstance(value, list):
        return [i for v in value for i in ids_of(v)]
    return []


# ==================================================================== the documents


class LinkedFile(Protocol):
    """The Nexus file an output's S3 object was linked as (``files.NexusFile`` is one)."""

    @property
    def address(self) -> str: ...

    @property
    def digest(self) -> str | None: ...


def activity_document(
    provenance: RunProvenance,
    entities: Sequence[str],
    *,
    id_base: str,
    service_agent: str,
    user: str,
) -> dict[str, Any]:
    """The run's activity; ``entities``: the ids of its outputs' entities, ``user``: the
    requesting user's IRI (``user_iri``)."""
    header = provenance.header
    request = header.request
    act = activity_id(id_base, header.project, header.run_id)
    configuration: dict[str, Any] = {
        "@id": f"{act}/configuration",
        "@type": ["Entity", "RunConfiguration"],
        "kind": request.kind,
        "requestDigest": {"algorithm": "SHA-256", "value": request.digest()},
    }
    if request.command is not None:
        configuration["command"] = list(request.command)
    if request.script is not None:
        script_digest = hashlib.sha256(request.script.encode()).hexdigest()
        configuration["scriptDigest"] = {"algorithm": "SHA-256", "value": script_digest}
    resources = request.resources.model_dump(exclude_none=True)
    configuration.update({_camel(k): v for k, v in sorted(resources.items())})
    if request.metadata:
        configuration["metadata"] = json.dumps(request.metadata, sort_keys=True)
    used: list[Any] = [configuration]
    for ref in request.inputs:
        if ref.startswith(("https://", "http://")):
            used.append({"@id": ref})
        else:
            used.append(
                {
                    "@type": "Entity",
                    "name": posixpath.basename(ref) or ref,
                    "clusterName": provenance.cluster_name,
                    "clusterPath": ref,
                }
            )
    document: dict[str, Any] = {
        "@context": CONTEXT,
        "@id": act,
        "@type": ["Activity", "WorkflowExecution"],
        "name": request.name or f"{request.kind} {header.run_id}",
        "runId": header.run_id,
        "virtualLabId": header.project.virtual_lab_id,
        "projectId": header.project.project_id,
        "status": "Done",
        "startedAtTime": _iso(provenance.started_at),
        "endedAtTime": _iso(provenance.ended_at),
        "wasAssociatedWith": {
            "@id": service_agent,
            "@type": ["Agent", "SoftwareAgent"],
            "name": "obp-workflow",
        },
        "wasAttributedTo": {
            "@id": user,
            "@type": ["Agent", "Person"],
            "identifier": header.requested_by.subject,
            "name": header.requested_by.username,
        },
        "used": used,
        "generated": list(entities),
        "clusterName": provenance.cluster_name,
        "jobId": provenance.job_id,
        "elapsed": _duration(provenance.started_at, provenance.ended_at),
        "syncKind": provenance.outcome.kind,
    }
    if provenance.exit_code is not None:
        document["exitCode"] = provenance.exit_code
    if provenance.accounting is not None:
        document["slurmAccounting"] = _accounting(provenance.accounting)
    return document


def entity_document(
    provenance: RunProvenance,
    file: SyncedFile,
    *,
    id_base: str,
    user: str,
    content_url: str,
    linked: LinkedFile | None = None,
) -> dict[str, Any]:
    """The output's entity; ``content_url``: where its content is read; ``linked``: the Nexus
    file its S3 object was linked as (the distribution is then that file, at the object's S3
    location)."""
    header = provenance.header
    name = posixpath.basename(file.relative_path)
    download: dict[str, Any] = {
        "@type": "DataDownload",
        "name": name,
        "encodingFormat": media_type_of(file.relative_path),
        "contentSize": {"unitCode": "bytes", "value": file.size},
        "contentUrl": content_url,
    }
    digest = file.digest
    if linked is not None:
        download["contentUrl"] = linked.address
        download["atLocation"] = {"@type": "Location", "location": file.location}
        digest = linked.digest or digest
    if digest:
        algorithm, _, value = digest.partition(":")
        if value:
            download["digest"] = {
                "algorithm": _ALGORITHMS.get(algorithm.lower(), algorithm.upper()),
                "value": value,
            }
    return {
        "@context": CONTEXT,
        "@id": entity_id(id_base, header.project, header.run_id, file.relative_path),
        "@type": ["Entity", "Dataset"],
        "name": name,
        "relativePath": file.relative_path,
        "runId": header.run_id,
        "wasGeneratedBy": activity_id(id_base, header.project, header.run_id),
        "wasAttributedTo": user,
        "distribution": download,
    }


# ==================================================================== helpers


def _accounting(record: JobAccounting) -> dict[str, Any]:
    """The scheduler's record of the job: what it allocated and how the job ended."""
    found: dict[str, Any] = {
        "@type": "SlurmAccounting",
        "jobId": record.job_id,
        "state": record.state.value,
        "nodes": record.nodes,
        "nodeList": record.node_list or None,
        "exitCode": record.exit_code,
        "signal": record.signal,
        "elapsed": None if record.elapsed_seconds is None else f"PT{record.elapsed_seconds}S",
        "start": record.started,
        "end": record.ended,
    }
    return {name: value for name, value in found.items() if value is not None}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _duration(start: datetime, end: datetime) -> str:
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    seconds = max(0.0, (end - start).total_seconds())
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return f"PT{text}S"
