"""PostgreSQL persistence: migrations, every SQL statement, and the functions that run them."""
