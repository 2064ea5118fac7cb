"""The REST application, independent of how requests arrive: the routes, the checks before
routing, problems, models, the OpenAPI document, and the authorizer's logic with the caller
context it hands the API. Kept light: the authorizer imports ``authorization.py`` alone."""
