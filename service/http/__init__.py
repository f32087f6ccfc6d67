"""The HTTP face: the Litestar app, the /v1 mount and its operations, decoding, auth, idempotency, docs, the server."""
