"""API Gateway on one machine: the authorizer and the API behind a loopback HTTP server."""
