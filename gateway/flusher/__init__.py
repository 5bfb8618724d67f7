"""The write-behind: Redis event streams into PostgreSQL, the background loop that runs it (and
renewals, webhooks), low-balance webhooks."""
