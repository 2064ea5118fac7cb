"""The composition root: settings, the service's slots, and one module per adapter family.

Every way in builds what it needs here: ``build(settings)`` (``root.py``) gives a container
whose providers make each adapter the first time it is needed; the family modules
(``fake.py``, ``aws.py``) are imported only when asked for; ``token_verifier.py`` builds the
authorizer's one port without the rest.
"""
