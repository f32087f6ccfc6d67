"""The store: PostgreSQL access (the pool, transactions, the 503 mapping), every SQL statement, migrate."""
