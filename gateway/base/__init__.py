"""What every layer uses: settings, metrics, logs, connections to Redis, errors."""
