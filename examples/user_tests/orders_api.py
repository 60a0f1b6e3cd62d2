"""The application under test: a small orders API. In your project this is your own
application module; the tests in test_api.py build it around the fixtures."""

from __future__ import annotations

# --8<-- [start:app]
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import BaseModel

from safesync_async import QueueProducer
from safesync_async.fastapi import (
    RedisDep,
    SafeSync,
    SessionDep,
    install_exception_handlers,
    producer,
)

order_reminders = producer("orders:reminders")
OrderReminders = Annotated[QueueProducer, Depends(order_reminders)]


class OrderIn(BaseModel):
    id: int
    total: int


def create_app(safesync: SafeSync) -> FastAPI:
    """The application; production code passes SafeSync(database_url, redis_url)."""
    app = FastAPI(lifespan=safesync.lifespan)
    install_exception_handlers(app)

    @app.post("/orders", status_code=201)
    async def create_order(order: OrderIn, session: SessionDep) -> dict[str, int]:
        await session.execute(
            "INSERT INTO user_api_orders (id, total) VALUES (:id, :total)", order.model_dump()
        )
        return {"id": order.id}  # committed before the response is sent

    @app.post("/orders/{order}/reminders", status_code=202)
    async def remind(order: int, reminders: OrderReminders) -> dict[str, str]:
        return {"entry": await reminders.publish({"order": order})}

    @app.get("/health")
    async def health(redis: RedisDep) -> dict[str, Any]:
        return {"redis": await redis.ping()}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


# --8<-- [end:app]
