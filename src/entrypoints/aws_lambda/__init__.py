"""The two Lambdas behind API Gateway: the REQUEST authorizer and the API (the
container-instances handler). Thin shells over ``http/`` and ``composition/``."""
