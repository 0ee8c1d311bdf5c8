"""One module per API family: parse the request, call a service, frame the answer (JSON or SSE)."""
