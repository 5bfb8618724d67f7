"""The credit service and its features (debits, batches, reservations, refunds, coupons, history,
pricing, tiers, renewals), with what they speak: request/result schemas, money, Redis keys, ids,
the one clock, the Lua scripts and the coalescer."""
