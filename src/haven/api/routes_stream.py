"""The live event stream: server-sent events, fed by polling the store's event log.

Each event is sent as `id: <event id>`, `event: event`, `data: <EventOut JSON>`. A client resumes
with `Last-Event-ID` (or `?after=`); without either the stream starts at the current end of the
log. A comment line is sent every `KEEPALIVE_S` so proxies keep the connection open. The stream
ends as soon as the client disconnects (or after `max_s` seconds, for scripts and tests).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from haven.api import views
from haven.api.auth import require_read
from haven.api.context import ApiContext, context, dumps, first_line
from haven.api.schemas import ERRORS
from haven.ports.store import StoreError

router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_read)], responses=ERRORS)

POLL_S = 0.5
KEEPALIVE_S = 15.0


def _read(ctx: ApiContext) -> list[views.EventOut]:
    prefix = ctx.layout.events()
    return views.events_from(ctx.get_prefix(prefix), prefix)


async def _stream(request: Request, ctx: ApiContext, cursor: str | None,
                  max_s: float | None) -> AsyncIterator[str]:
    ctx.open_streams += 1  # only touched on the event loop thread
    try:
        async for chunk in _events(request, ctx, cursor, max_s):
            yield chunk
    finally:
        ctx.open_streams -= 1


async def _events(request: Request, ctx: ApiContext, cursor: str | None,
                  max_s: float | None) -> AsyncIterator[str]:
    started = last_sent = time.monotonic()
    yield "retry: 2000\n: connected\n\n"
    store_down = False
    while not await request.is_disconnected():
        try:
            events = await run_in_threadpool(_read, ctx)
            if cursor is None:
                cursor = events[-1].id if events else ""
            fresh = [e for e in events if e.id > cursor]
            if store_down:
                store_down = False
                yield f"event: store\ndata: {dumps({'reachable': True})}\n\n"
        except StoreError as error:
            ctx.count_store_error()
            fresh = []
            if not store_down:
                store_down = True
                yield f"event: store\ndata: {dumps({'reachable': False, 'detail': first_line(error)})}\n\n"
        for event in fresh:
            cursor = event.id
            yield f"id: {event.id}\nevent: event\ndata: {event.model_dump_json()}\n\n"
        now = time.monotonic()
        if fresh:
            last_sent = now
        elif now - last_sent >= KEEPALIVE_S:
            last_sent = now
            yield ": keepalive\n\n"
        if max_s is not None and now - started >= max_s:
            return
        await asyncio.sleep(POLL_S)


@router.get("/events/stream", tags=["read"], response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "server-sent events, one per event-log entry"}})
async def stream_events(request: Request, ctx: ApiContext = Depends(context),
                        after: str | None = Query(None, max_length=200,
                                                  description="start after this event id"),
                        max_s: float | None = Query(None, gt=0, le=86400,
                                                    description="end the stream after this many seconds"),
                        last_event_id: str | None = Header(None, max_length=200)) -> StreamingResponse:
    """Follow the event log live (server-sent events)."""
    cursor = last_event_id or after
    return StreamingResponse(_stream(request, ctx, cursor, max_s), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
