"""HTTP: the uvicorn server on the socket, the ASGI app, TCP bearer auth, the OpenAPI error table, routes/."""
