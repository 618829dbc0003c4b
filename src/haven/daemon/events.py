"""A daemon's events: one JSON line each on stdout at once, and into the store's event log later.

Writing to the store can block for the store client's whole deadline when the store is out of
reach, and nothing that reports must delay what it reports (a self-fence kills first): `emit`
only prints and queues; a thread of its own ships the queue, in order, once the store answers.
"""
from __future__ import annotations

import json
import sys
import threading
from collections import deque
from typing import TextIO

from haven.core.events import Event, to_dict
from haven.ports.store import Store, StoreError
from haven.runtime.layout import Layout, encode_event

BUFFERED_EVENTS = 1000  # kept while the store is away; the oldest go first beyond that
RETRY_S = 0.5
IDLE_WAIT_S = 5.0


class EventLog:
    def __init__(self, store: Store, layout: Layout, out: TextIO = sys.stdout) -> None:
        self.store = store
        self.layout = layout
        self.out = out
        self.lock = threading.Lock()  # one writer per line, and the queue's guard
        self.pending: deque[tuple[Event, int]] = deque(maxlen=BUFFERED_EVENTS)
        self.ready = threading.Condition(self.lock)
        self.seq = 0
        self.dropped = 0

    def emit(self, event: Event) -> None:
        line = json.dumps({**to_dict(event), "t": round(event.t, 3)})  # the store's fields, message last
        with self.lock:
            self.out.write(line + "\n")
            self.out.flush()
            if event.source != "manager":  # the manager writes its own events in its transaction
                self.seq += 1
                if len(self.pending) == self.pending.maxlen:
                    self.dropped += 1
                self.pending.append((event, self.seq))
                self.ready.notify()

    def publish(self, stopping: threading.Event) -> None:
        """Ship queued events to the store until `stopping` is set (run it on a thread)."""
        while not stopping.is_set():
            with self.lock:
                if not self.pending:
                    self.ready.wait(IDLE_WAIT_S)  # `emit` wakes it; the timeout only notices `stopping`
                    continue
                event, seq = self.pending[0]
            try:
                self.store.put(self.layout.event(event, seq), encode_event(event))
            except StoreError:
                stopping.wait(RETRY_S)  # keep it: shipped once the store answers
                continue
            with self.lock:
                if self.pending and self.pending[0][1] == seq:
                    self.pending.popleft()

    def stop(self) -> None:
        with self.lock:
            self.ready.notify_all()
