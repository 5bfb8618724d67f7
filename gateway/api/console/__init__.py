"""The operators' console: a web page the gateway serves at /console (no CDN: it works offline),
over the same API a client uses, with the key its user types in (kept in the browser tab's
session storage only). Live counters and charts, a user lookup, the audit log."""
