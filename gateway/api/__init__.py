"""HTTP: the app factory, the debit fast path, routes, API keys, health, the services the routes
use, how connections and paths are handled."""
