"""The use cases, over ports only: :class:`~.requests.Requests` (what the API asks) and
:class:`~.pipeline.Pipeline` (what drives runs), sharing the repository, clock and ids."""
