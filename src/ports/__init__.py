"""The seams between the application and the outside world, in the domain's words.

Every port is a ``typing.Protocol`` with abstract methods; adapters and fakes inherit it
explicitly. Ports raise domain errors (``obp_workflow.core.errors``) and only those.
"""
