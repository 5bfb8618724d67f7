"""Credit and usage metering gateway: atomic Redis debits, PostgreSQL as the source of truth."""
