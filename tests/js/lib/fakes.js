// Fakes for the client's unit tests: a manual clock and scriptable transports.

/** Timers that run only when the test advances the clock. */
export class FakeClock {
  constructor() {
    this.t = 0;
    this.nextId = 1;
    this.timers = new Map(); // id -> {at, fn, every}
  }
  setTimeout(fn, ms) { const id = this.nextId++; this.timers.set(id, { at: this.t + Math.max(0, ms), fn }); return id; }
  clearTimeout(id) { this.timers.delete(id); }
  setInterval(fn, ms) { const id = this.nextId++; this.timers.set(id, { at: this.t + ms, fn, every: ms }); return id; }
  clearInterval(id) { this.timers.delete(id); }
  now() { return this.t; }
  /** Runs every timer due within ms, in time order (microtasks between). */
  async advance(ms) {
    const end = this.t + ms;
    for (;;) {
      await flush();
      let best = null;
      for (const [id, tm] of this.timers) if (tm.at <= end && (!best || tm.at < best[1].at)) best = [id, tm];
      if (!best) break;
      const [id, tm] = best;
      this.t = tm.at;
      if (tm.every) tm.at += tm.every; else this.timers.delete(id);
      tm.fn();
    }
    this.t = end;
    await flush();
  }
  pending() { return this.timers.size; }
}

/** Lets promise callbacks and microtasks run. */
export async function flush(n = 20) {
  for (let i = 0; i < n; i++) await Promise.resolve();
}

/**
 * Transport factories whose instances the test drives. `log` lists every
 * instance created; each has .ctx, .sent (messages), .opened, .closed, and
 * helpers open_(), message(m), drop(info).
 */
export function fakeTransports(behaviour = {}) {
  const log = [];
  const make = (name, bidirectional) => (ctx) => {
    const t = {
      name,
      bidirectional,
      ctx,
      sent: [],
      restarts: 0,
      closed: false,
      opened: false,
      topicsAtOpen: null,
      open() {
        t.topicsAtOpen = ctx.topics();
        const b = behaviour[name];
        if (b === 'refuse') queueMicrotask(() => !t.closed && ctx.onClose({ code: 1006, reason: 'refused', opened: false }));
        else if (b === 'hang') { /* never opens */ } else if (b !== 'manual') queueMicrotask(() => t.open_());
      },
      open_() { if (t.closed) return; t.opened = true; ctx.onOpen(); },
      send(m) { if (t.closed) return false; t.sent.push(m); return true; },
      restart() { t.restarts++; t.topicsAtOpen = ctx.topics(); },
      close() { t.closed = true; },
      message(m) { ctx.onMessage(m); },
      drop(info = {}) { t.closed = true; ctx.onClose({ code: 1006, reason: 'dropped', opened: t.opened, ...info }); },
    };
    log.push(t);
    return t;
  };
  return {
    log,
    factories: { websocket: make('websocket', true), sse: make('sse', false), longpoll: make('longpoll', false) },
    last(name) { for (let i = log.length - 1; i >= 0; i--) if (!name || log[i].name === name) return log[i]; return null; },
  };
}

export function ev(topic, seq, extra = {}) {
  return { type: 'event', topic, event: 'ADDED', seq, id: `${topic}:${seq}`, data: { i: seq }, ...extra };
}

/** A random source that returns the values given, then repeats the last. */
export function seq(...values) {
  let i = 0;
  return () => values[Math.min(i++, values.length - 1)];
}
