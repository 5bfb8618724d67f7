"""Everything the routes use, built once in the app's lifespan and kept in app.state.services."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis

from gateway.api.auth import Authenticator
from gateway.base.settings import Settings
from gateway.credits.batch import BatchService
from gateway.credits.coupons import CouponService
from gateway.credits.grants import GrantsService
from gateway.credits.history import HistoryService
from gateway.credits.refunds import RefundService
from gateway.credits.reservations import ReservationService
from gateway.credits.service import CreditService
from gateway.flusher.flush import Flusher


@dataclass(frozen=True, slots=True)
class Services:
    redis: Redis
    pool: asyncpg.Pool
    credits: CreditService
    flusher: Flusher
    authenticator: Authenticator
    reservations: ReservationService
    refunds: RefundService
    batch: BatchService
    history: HistoryService
    coupons: CouponService
    grants: GrantsService
    settings: Settings

    @classmethod
    def build(
        cls, settings: Settings, credits: CreditService, flusher: Flusher, auth: Authenticator
    ) -> Services:
        return cls(
            settings=settings,
            redis=credits.redis,
            pool=credits.pool,
            credits=credits,
            flusher=flusher,
            authenticator=auth,
            reservations=ReservationService(credits),
            refunds=RefundService(credits, flusher),
            batch=BatchService(credits),
            history=HistoryService(credits),
            coupons=CouponService(credits, flusher),
            grants=GrantsService(credits),
        )
