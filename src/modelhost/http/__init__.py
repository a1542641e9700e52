"""Everything that knows HTTP: the gate, routes, the error renderer, pages, the uvicorn server."""
