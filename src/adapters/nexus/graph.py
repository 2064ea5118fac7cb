"""The knowledge graph on Blue Brain Nexus Delta v1: the port, over the provenance and the files.

``NexusKnowledgeGraph`` is the run's files (``files.NexusRunFiles``: upload, link, read; public
for the synchronizers, not in the port) and the port's two calls, which write and withdraw the
provenance documents (``provenance.py``) at ids derived from the run, so registering again
updates and never duplicates. Each Virtual Lab project has its own private Nexus project
(``NexusSettings.project_for``).

``register`` first links the outputs the Lustre HSM exported to the Nexus data bucket as the
run's Nexus files (``NexusRunFiles.link_outputs``), then writes one entity per output (in
parallel, ``concurrency``), then the activity: the activity is the commit marker, written once
everything it points to exists. Each write is ``PUT`` without ``rev`` (create);
``ResourceAlreadyExists`` -> read the current revision and ``PUT ?rev=N``; ``IncorrectRev`` ->
read again and retry (bounded). A lost reply is therefore harmless: the retry finds the
resource and updates it.

``withdraw`` deprecates the run's entities (those the activity names and those its request
announced), their files, then the activity; what is absent or already deprecated is skipped,
so it is idempotent and does nothing for a run that registered nothing.
"""

from __future__ import annotations

from typing import Any

from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.run import RunHeader
from obp_workflow.core.sync import SyncedFile
from obp_workflow.ports.knowledge_graph import (
    KnowledgeGraph,
    RecordedProvenance,
    Registration,
    RunProvenance,
)

from .files import NexusFile, NexusRunFiles
from .provenance import (
    activity_document,
    activity_id,
    entity_document,
    entity_id,
    ids_of,
    user_iri,
)


class NexusKnowledgeGraph(NexusRunFiles, KnowledgeGraph):
    """``KnowledgeGraph`` on Nexus Delta v1 with the service's own token."""

    def activity_id(self, project: ProjectRef, run_id: str) -> str:
        return activity_id(self.settings.id_base, project, run_id)

    def entity_id(self, project: ProjectRef, run_id: str, relative_path: str) -> str:
        return entity_id(self.settings.id_base, project, run_id, relative_path)

    # ================================================================ the port

    def register(self, provenance: RunProvenance) -> Registration:
        header = provenance.header
        org, project = self.project_for(header.project)
        files = provenance.outcome.files
        entities = [self.entity_id(header.project, header.run_id, f.relative_path) for f in files]
        linked = self.link_outputs(header, files)

        def write(item: tuple[str, SyncedFile, NexusFile | None]) -> None:
            ident, file, link = item
            document = entity_document(
                provenance,
                file,
                id_base=self.settings.id_base,
                user=self._user(header),
                content_url=self._content_url(file.location, org, project),
                linked=link,
            )
            self.nexus.upsert(org, project, ident, document)

        self.nexus.each(write, list(zip(entities, files, linked, strict=True)))
        act = self.activity_id(header.project, header.run_id)
        document = activity_document(
            provenance,
            entities,
            id_base=self.settings.id_base,
            service_agent=self.settings.service_agent,
            user=self._user(header),
        )
        self.nexus.upsert(org, project, act, document)
        return Registration(act, entities)

    def withdraw(self, run: RunHeader) -> None:
        org, project = self.project_for(run.project)
        act = self.activity_id(run.project, run.run_id)
        activity = self.nexus.fetch(org, project, act)
        prefix = act + "/outputs/"
        named = ids_of(activity.get("generated")) if activity is not None else []
        announced = [self.entity_id(run.project, run.run_id, p) for p in run.request.outputs]
        entities = [i for i in dict.fromkeys([*named, *announced]) if i.startswith(prefix)]
        self.nexus.each(lambda ident: self.nexus.deprecate(org, project, ident), entities)
        self.nexus.each(
            lambda ident: self.nexus.deprecate_file(org, project, ident + "/file"), entities
        )
        self.nexus.deprecate(org, project, act)

    def read(self, run: RunHeader) -> RecordedProvenance | None:
        org, project = self.project_for(run.project)
        act = self.activity_id(run.project, run.run_id)
        activity = self.nexus.fetch(org, project, act)
        if activity is None:
            return None
        prefix = act + "/outputs/"
        named = [i for i in ids_of(activity.get("generated")) if i.startswith(prefix)]
        found: dict[str, dict[str, Any]] = {}

        def fetch(ident: str) -> None:
            entity = self.nexus.fetch(org, project, ident)
            if entity is not None:
                found[ident] = entity

        self.nexus.each(fetch, named)
        return RecordedProvenance(
            activity_id=act,
            activity=activity,
            entities=[found[i] for i in named if i in found],
            revision=int(activity.get("_rev", 1)),
            withdrawn=activity.get("_deprecated") is True,
        )

    # ================================================================ plumbing

    def _user(self, header: RunHeader) -> str:
        """The requesting user as Nexus names users (its preferred_username in the realm)."""
        return user_iri(self.settings.base, self.settings.realm, header.requested_by.username)

    def _content_url(self, location: str, org: str, project: str) -> str:
        if location.startswith(("s3://", f"{self.settings.base}/files/")):
            return location
        return self.nexus.file_address(org, project, location)  # a Nexus file id
