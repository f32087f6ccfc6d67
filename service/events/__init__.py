"""The event path: the relay from the outbox to the Redis stream (leadership, pacing, publishing,
retention), the Redis client, and the reference consumer. It never imports the HTTP face."""
