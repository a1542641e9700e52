"""Everything that knows HTTP: routes, error mapping, middleware, pages, the uvicorn server."""
