// moonwire JavaScript client: one ES module for browsers and Node 20, no
// dependencies. See docs/client.md.
//
//   import { Moonwire } from './moonwire.js';
//   const mw = new Moonwire('https://rt.example.com', { token });
//   const sub = mw.subscribe('gift-list:123', {
//     onEvent: (ev) => ...,                      // in seq order, exactly once
//     onRecovery: ({ recovered }) => { if (!recovered) refetch(); },
//   });
//   await mw.publish('room:1', 'CUSTOM', { payload: { text: 'hi' } });
//
// Transports: WebSocket (moonwire.json), then Server-Sent Events, then
// long-poll; the client falls back when a transport fails to open while the
// server is reachable, and probes WebSocket again periodically. Positions
// ({seq, epoch} per topic) are kept by the client and sent back on every
// (re)subscription, on any transport, so nothing is lost or duplicated.

export const VERSION = '0.1.0';
export const TRANSPORTS = ['websocket', 'sse', 'longpoll'];

const DEFAULTS = {
  transports: TRANSPORTS,
  backoffBase: 500, // ms: first retry within [0, 500)
  backoffMax: 30000, // ms: the cap of every retry delay
  openTimeout: 8000, // ms: a transport that does not open by then failed
  fallbackAfter: 2, // failures before open (server reachable) -> next transport
  upgradeInterval: 30000, // ms between WebSocket probes while on a fallback
  pingInterval: 20000, // ms between WebSocket pings
  pongTimeout: 10000, // ms without any message after a ping: dead connection
  requestTimeout: 10000, // ms for an ack (publish, presence)
  reorderTimeout: 200, // ms to wait for a missing seq before skipping it
  reorderMax: 256, // events held per topic while waiting
  pollTimeout: 25, // s: long-poll wait
};

// --- small pure helpers (exported for tests) -------------------------------

/** Full-jitter exponential backoff: uniform in [0, min(max, base * 2^attempt)). */
export function backoffDelay(attempt, { base = DEFAULTS.backoffBase, max = DEFAULTS.backoffMax } = {}, random = Math.random) {
  const ceiling = Math.min(max, base * Math.pow(2, Math.max(0, Math.min(attempt, 30))));
  return Math.floor(random() * ceiling);
}

/**
 * What to try after a transport failed. `failures` counts consecutive
 * failures of `current` before it ever opened; `reachable` tells whether the
 * server answered plain HTTP meanwhile (a server that is down is not a reason
 * to change transport). Returns { transport, fallback }.
 */
export function nextTransport({ current, order = TRANSPORTS, failures, reachable, fallbackAfter = DEFAULTS.fallbackAfter, opened = false }) {
  const i = order.indexOf(current);
  if (opened || !reachable || failures < fallbackAfter || i < 0 || i === order.length - 1) {
    return { transport: current, fallback: false };
  }
  return { transport: order[i + 1], fallback: true };
}

function b64urlEncode(text) {
  const bytes = new TextEncoder().encode(text);
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function b64urlDecode(s) {
  let t = s.replace(/-/g, '+').replace(/_/g, '/');
  while (t.length % 4) t += '=';
  const bin = atob(t);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new TextDecoder().decode(bytes);
}

/** {topic: {seq, epoch}} -> the SSE / long-poll cursor string. */
export function encodeCursor(positions) {
  const o = {};
  for (const [topic, p] of Object.entries(positions)) o[topic] = [p.seq, p.epoch || ''];
  return b64urlEncode(JSON.stringify(o));
}

/** A cursor string -> {topic: {seq, epoch}}, or null when malformed. */
export function decodeCursor(cursor) {
  if (!cursor) return null;
  try {
    const o = JSON.parse(b64urlDecode(cursor));
    const out = {};
    for (const [topic, v] of Object.entries(o)) {
      if (!Array.isArray(v) || typeof v[0] !== 'number') return null;
      out[topic] = { seq: v[0], epoch: String(v[1] ?? '') };
    }
    return out;
  } catch {
    return null;
  }
}

export class MoonwireError extends Error {
  constructor(message, code, data) {
    super(message);
    this.name = 'MoonwireError';
    this.code = code;
    if (data !== undefined) this.data = data;
  }
}

class Emitter {
  constructor() { this._handlers = new Map(); }
  /** Adds a listener; returns a function that removes it. */
  on(type, fn) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(fn);
    return () => this.off(type, fn);
  }
  off(type, fn) { this._handlers.get(type)?.delete(fn); }
  once(type, fn) {
    const off = this.on(type, (...a) => { off(); fn(...a); });
    return off;
  }
  emit(type, payload) {
    const set = this._handlers.get(type);
    if (!set) return;
    for (const fn of [...set]) {
      try { fn(payload); } catch (e) { queueMicrotask(() => { throw e; }); }
    }
  }
}

// --- per-topic state: position, order, dedupe --------------------------------

/**
 * Orders the events of one topic by seq and drops duplicates. `lastSeq` is
 * the last seq handed to the application (null: none yet, live from now).
 */
export class TopicState {
  constructor(topic, { reorderTimeout = DEFAULTS.reorderTimeout, reorderMax = DEFAULTS.reorderMax, timers } = {}) {
    this.topic = topic;
    this.lastSeq = null;
    this.epoch = null;
    this.buffer = new Map(); // seq -> event
    this.reorderTimeout = reorderTimeout;
    this.reorderMax = reorderMax;
    this.timers = timers || defaultTimers();
    this.gapTimer = null;
    this.stats = { delivered: 0, duplicates: 0, skipped: 0 };
  }

  /** The resume position, or null when nothing is known yet. */
  position() {
    return this.lastSeq == null ? null : { seq: this.lastSeq, epoch: this.epoch || '' };
  }

  /** Feeds one event; calls deliver(ev) for each event now in order. */
  push(ev, deliver) {
    const seq = ev.seq;
    if (typeof seq !== 'number') { deliver(ev); return; }
    if (this.lastSeq != null && seq <= this.lastSeq) { this.stats.duplicates++; return; }
    if (this.buffer.has(seq)) { this.stats.duplicates++; return; }
    if (this.lastSeq == null || seq === this.lastSeq + 1 || this.reorderTimeout <= 0) {
      this._deliver(ev, deliver);
      this._drain(deliver);
      return;
    }
    // A gap: hold the event for a short while, the missing one may follow.
    this.buffer.set(seq, ev);
    if (this.buffer.size > this.reorderMax) { this.flush(deliver); return; }
    if (!this.gapTimer) {
      this.gapTimer = this.timers.setTimeout(() => { this.gapTimer = null; this.flush(deliver); }, this.reorderTimeout);
    }
  }

  /** Gives up waiting: delivers what is held, in order, across the gaps. */
  flush(deliver) {
    if (this.gapTimer) { this.timers.clearTimeout(this.gapTimer); this.gapTimer = null; }
    const seqs = [...this.buffer.keys()].sort((a, b) => a - b);
    for (const s of seqs) {
      const ev = this.buffer.get(s);
      this.buffer.delete(s);
      if (this.lastSeq != null && s > this.lastSeq + 1) this.stats.skipped += s - this.lastSeq - 1;
      this._deliver(ev, deliver);
    }
  }

  /** The server says we have seen everything up to seq (cursor, ack). */
  advance(seq, epoch) {
    if (epoch) this.epoch = epoch;
    if (typeof seq === 'number' && this.buffer.size === 0 && (this.lastSeq == null || seq > this.lastSeq)) this.lastSeq = seq;
  }

  /** History is gone (recovered:false): continue from the current position. */
  reset(seq, epoch) {
    if (this.gapTimer) { this.timers.clearTimeout(this.gapTimer); this.gapTimer = null; }
    this.buffer.clear();
    this.lastSeq = typeof seq === 'number' ? seq : null;
    this.epoch = epoch || null;
  }

  dispose() {
    if (this.gapTimer) this.timers.clearTimeout(this.gapTimer);
    this.gapTimer = null;
    this.buffer.clear();
  }

  _deliver(ev, deliver) {
    this.lastSeq = ev.seq;
    this.stats.delivered++;
    deliver(ev);
  }

  _drain(deliver) {
    while (this.buffer.has(this.lastSeq + 1)) {
      const ev = this.buffer.get(this.lastSeq + 1);
      this.buffer.delete(this.lastSeq + 1);
      this._deliver(ev, deliver);
    }
    if (this.buffer.size === 0 && this.gapTimer) { this.timers.clearTimeout(this.gapTimer); this.gapTimer = null; }
  }
}

function defaultTimers() {
  return {
    setTimeout: (fn, ms) => setTimeout(fn, ms),
    clearTimeout: (t) => clearTimeout(t),
    setInterval: (fn, ms) => setInterval(fn, ms),
    clearInterval: (t) => clearInterval(t),
    now: () => Date.now(),
  };
}

// --- transports ---------------------------------------------------------------
//
// A transport factory is called as factory(ctx) and returns
//   { name, bidirectional, open(), close(), send?(obj) -> boolean, restart?() }
// and reports through ctx: onOpen(), onMessage(msg), onClose({code, reason, opened}).
// ctx also has: url(path, params), topics() -> [[topic, position|null]],
// options, timers. Messages use the WebSocket vocabulary plus:
//   {type:'recovery', topic, recovered, seq, epoch}
//   {type:'positions', positions:{topic:{seq,epoch}}}
//   {type:'disconnect', reason}     {type:'topic-error', topic, code, reason}

// Node 20 has no WebSocket or EventSource: load the `ws` / `eventsource`
// packages when they are installed (or pass them as options).
const detected = {};
async function detect(pkg, pick) {
  if (!(pkg in detected)) {
    try {
      const name = pkg; // a variable: bundlers leave it alone
      const mod = await import(/* @vite-ignore */ /* webpackIgnore: true */ name);
      detected[pkg] = pick(mod) || null;
    } catch {
      detected[pkg] = null;
    }
  }
  return detected[pkg];
}

function wsTransport(ctx) {
  let WS = ctx.options.WebSocket || globalThis.WebSocket;
  let ws = null;
  let opened = false;
  let closed = false;
  const t = {
    name: 'websocket',
    bidirectional: true,
    async open() {
      if (!WS) WS = await detect('ws', (m) => m.WebSocket || m.default);
      if (closed) return;
      if (!WS) { ctx.onClose({ code: 0, reason: 'no WebSocket implementation (install ws)', opened: false }); return; }
      const url = ctx.url('/ws', {}).replace(/^http/, 'ws');
      try {
        ws = new WS(url, 'moonwire.json');
      } catch (e) {
        queueMicrotask(() => ctx.onClose({ code: 0, reason: String(e && e.message || e), opened: false }));
        return;
      }
      ws.onopen = () => { if (closed) return; opened = true; ctx.onOpen(); };
      ws.onmessage = (m) => {
        if (closed) return;
        if (typeof m.data !== 'string') return;
        let msg;
        try { msg = JSON.parse(m.data); } catch { return; }
        ctx.onMessage(msg);
      };
      ws.onerror = () => {};
      ws.onclose = (e) => {
        if (closed) return;
        closed = true;
        ctx.onClose({ code: e.code, reason: e.reason || '', opened });
      };
    },
    send(obj) {
      if (!ws || closed || ws.readyState !== 1) return false;
      ws.send(JSON.stringify(obj));
      return true;
    },
    close(code = 1000, reason = 'client closed') {
      closed = true;
      if (ws) {
        ws.onopen = ws.onmessage = ws.onclose = null;
        ws.onerror = () => {};
        try { ws.close(code, reason); } catch { /* not open yet */ }
      }
    },
  };
  return t;
}

function sseTransport(ctx) {
  let ES = ctx.options.EventSource || globalThis.EventSource;
  let es = null;
  let opened = false;
  let closed = false;
  const handleData = (e) => {
    if (closed) return;
    let msg;
    try { msg = JSON.parse(e.data); } catch { return; }
    if (msg.type === 'event' && e.lastEventId) {
      const pos = decodeCursor(e.lastEventId);
      ctx.onMessage(msg);
      if (pos) ctx.onMessage({ type: 'positions', positions: pos });
      return;
    }
    ctx.onMessage(msg);
  };
  const t = {
    name: 'sse',
    bidirectional: false,
    async open() {
      if (!ES) ES = await detect('eventsource', (m) => m.EventSource || m.default);
      if (closed) return;
      if (!ES) { ctx.onClose({ code: 0, reason: 'no EventSource implementation (install eventsource)', opened: false }); return; }
      const topics = ctx.topics();
      if (topics.length === 0) { if (!opened) { opened = true; ctx.onOpen(); } return; }
      const params = { topics: topics.map(([tp]) => tp).join(',') };
      const known = {};
      for (const [tp, p] of topics) if (p) known[tp] = p;
      if (Object.keys(known).length) params.since = encodeCursor(known);
      es = new ES(ctx.url('/sse', params));
      const mine = es;
      es.onopen = () => { if (closed || es !== mine || opened) return; opened = true; ctx.onOpen(); };
      es.onmessage = handleData;
      es.addEventListener('moonwire', handleData);
      es.addEventListener('error', (e) => {
        if (closed) return;
        if (e && typeof e.data === 'string' && e.data) { // event: error, a refused topic
          try { const d = JSON.parse(e.data); ctx.onMessage({ type: 'topic-error', ...d }); } catch { /* ignore */ }
          return;
        }
        // The stream failed: we reconnect ourselves (with our positions).
        closed = true;
        es.close();
        ctx.onClose({ code: 0, reason: 'sse error', opened });
      });
    },
    // New topic list: a new stream from our positions (no second onOpen).
    restart() { if (closed) return; if (es) { es.onopen = es.onmessage = null; es.close(); es = null; } t.open(); },
    close() { closed = true; if (es) { es.onopen = es.onmessage = null; es.close(); } },
  };
  return t;
}

function longpollTransport(ctx) {
  const fetchFn = ctx.options.fetch || globalThis.fetch;
  let controller = null;
  let closed = false;
  let opened = false;
  let generation = 0;
  let first = true;
  const loop = async (gen) => {
    while (!closed && gen === generation) {
      const topics = ctx.topics();
      if (topics.length === 0) {
        if (!opened) { opened = true; ctx.onOpen(); }
        return; // restarted when topics change
      }
      // The first poll answers at once: it opens the transport and fetches
      // the positions of every topic; the next ones wait.
      const wait = first ? 0 : ctx.options.pollTimeout;
      first = false;
      const params = { topics: topics.map(([tp]) => tp).join(','), timeout: String(wait) };
      const known = {};
      for (const [tp, p] of topics) if (p) known[tp] = p;
      if (Object.keys(known).length) params.cursor = encodeCursor(known);
      controller = new AbortController();
      const guard = ctx.timers.setTimeout(() => controller.abort(), (wait + 10) * 1000);
      let body;
      try {
        const res = await fetchFn(ctx.url('/poll', params), { signal: controller.signal, credentials: 'include', cache: 'no-store' });
        if (!res.ok) throw new MoonwireError(`poll answered ${res.status}`, res.status);
        body = await res.json();
      } catch (e) {
        ctx.timers.clearTimeout(guard);
        if (closed || gen !== generation) return;
        closed = true;
        ctx.onClose({ code: e && e.code || 0, reason: String(e && e.message || e), opened });
        return;
      }
      ctx.timers.clearTimeout(guard);
      if (closed || gen !== generation) return;
      if (!opened) { opened = true; ctx.onOpen(); }
      for (const ev of body.events || []) ctx.onMessage(ev);
      const pos = decodeCursor(body.cursor);
      if (body.recovered === false && Array.isArray(body.unrecovered)) {
        for (const tp of body.unrecovered) {
          const p = pos && pos[tp];
          ctx.onMessage({ type: 'recovery', topic: tp, recovered: false, seq: p ? p.seq : undefined, epoch: p ? p.epoch : undefined });
        }
      }
      if (pos) ctx.onMessage({ type: 'positions', positions: pos });
      if (body.disconnected) {
        closed = true;
        ctx.onMessage({ type: 'disconnect', reason: body.reason || 'disconnected' });
        ctx.onClose({ code: 4001, reason: body.reason || 'disconnected', opened });
        return;
      }
    }
  };
  const t = {
    name: 'longpoll',
    bidirectional: false,
    open() {
      if (!fetchFn) { queueMicrotask(() => ctx.onClose({ code: 0, reason: 'no fetch implementation', opened: false })); return; }
      loop(++generation);
    },
    restart() {
      if (closed) return;
      generation++;
      first = true;
      if (controller) controller.abort();
      loop(generation);
    },
    close() { closed = true; generation++; if (controller) controller.abort(); },
  };
  return t;
}

export const builtinTransports = { websocket: wsTransport, sse: sseTransport, longpoll: longpollTransport };

// --- the client -----------------------------------------------------------------

/**
 * A moonwire connection with subscriptions that survive reconnects and
 * transport changes. Events: 'state' {state, transport}, 'open', 'close',
 * 'fallback' {from, to, reason}, 'upgrade' {from, to}, 'event' (every
 * event), 'recovery' {topic, recovered, seq, epoch}, 'presence',
 * 'error' {topic?, code, reason}.
 */
export class Moonwire extends Emitter {
  constructor(url, options = {}) {
    super();
    if (!url && typeof location !== 'undefined') url = location.origin;
    if (!url) throw new MoonwireError('a server URL is needed', 'config');
    this.baseUrl = String(url).replace(/\/+$/, '').replace(/^ws/, 'http');
    this.options = { ...DEFAULTS, ...options };
    this.timers = options.timers || defaultTimers();
    this.random = options.random || Math.random;
    this.factories = { ...builtinTransports, ...(options.transportFactories || {}) };
    this.order = this.options.transports.filter((n) => this.factories[n]);
    this.state = 'idle';
    this.transport = null; // name of the transport in use (or being tried)
    this.topics = new Map(); // topic -> {state: TopicState, subs: Set, acked: bool}
    this.pending = new Map(); // request id -> {resolve, reject, timer}
    this.queue = []; // publish/presence waiting for an open WebSocket
    this.attempt = 0;
    this.failures = 0; // consecutive failures of `transport` before open
    this._nextId = 1;
    this._t = null; // the live transport object
    this._retryTimer = null;
    this._pingTimer = null;
    this._pongTimer = null;
    this._upgradeTimer = null;
    this._probe = null;
    this._syncQueued = false;
    this._desired = this.order[0];
    if (options.autoConnect !== false) this.connect();
  }

  // --- public API ---

  /** Starts (or restarts after close()) connecting. */
  connect() {
    if (this.state !== 'idle' && this.state !== 'closed') return this;
    this.attempt = 0;
    this.failures = 0;
    this._setState('connecting');
    this._start(this._desired);
    return this;
  }

  /** Closes for good (until connect()); pending requests fail. */
  close() {
    this._clearTimers();
    this._stopProbe();
    if (this._t) { this._t.close(); this._t = null; }
    this._failPending(new MoonwireError('client closed', 'closed'));
    for (const rec of this.topics.values()) rec.state.dispose();
    this._setState('closed');
    this.emit('close', {});
  }

  /**
   * Subscribes to a topic. handlers: onEvent(ev), onRecovery({recovered,
   * seq, epoch}), onSubscribed({seq, epoch}), onError({code, reason}).
   * Options: since {seq, epoch} to start from a known position.
   * Returns {topic, unsubscribe()}.
   */
  subscribe(topic, handlers = {}, opts = {}) {
    if (typeof handlers === 'function') handlers = { onEvent: handlers };
    let rec = this.topics.get(topic);
    if (!rec) {
      const state = new TopicState(topic, { reorderTimeout: this.options.reorderTimeout, reorderMax: this.options.reorderMax, timers: this.timers });
      if (opts.since && typeof opts.since.seq === 'number') state.reset(opts.since.seq, opts.since.epoch);
      rec = { state, subs: new Set(), acked: false };
      this.topics.set(topic, rec);
      this._queueSync();
    }
    const sub = { topic, handlers, unsubscribe: () => this._unsubscribe(topic, sub) };
    rec.subs.add(sub);
    if (rec.acked && handlers.onSubscribed) {
      const p = rec.state.position();
      queueMicrotask(() => handlers.onSubscribed({ topic, seq: p && p.seq, epoch: p && p.epoch }));
    }
    return sub;
  }

  /** The topics subscribed to, with their positions. */
  positions() {
    const out = {};
    for (const [t, rec] of this.topics) out[t] = rec.state.position();
    return out;
  }

  /** Publishes over the WebSocket; resolves with {status, seq} on ack. */
  publish(topic, event, data = {}) {
    return this._request({ type: 'publish', topic, event, data });
  }

  /** Who is subscribed to topic (WebSocket; this connection must be subscribed). */
  presence(topic) {
    return this._request({ type: 'presence', topic });
  }

  // --- internals: requests ---

  _request(msg) {
    return new Promise((resolve, reject) => {
      if (this.state === 'closed') { reject(new MoonwireError('client closed', 'closed')); return; }
      const id = `c${this._nextId++}`;
      const entry = { msg: { ...msg, id }, resolve, reject, timer: null, sent: false };
      entry.timer = this.timers.setTimeout(() => {
        this.pending.delete(id);
        this.queue = this.queue.filter((q) => q !== entry);
        reject(new MoonwireError(`${msg.type} timed out`, 'timeout'));
      }, this.options.requestTimeout);
      this.pending.set(id, entry);
      if (this.state === 'open' && this._t && this._t.bidirectional) this._send(entry);
      else if (this.state === 'open' && this._t && !this._t.bidirectional) {
        this._settle(id, new MoonwireError(`${msg.type} needs the WebSocket transport (in use: ${this.transport})`, 'unsupported'));
      } else this.queue.push(entry);
    });
  }

  _send(entry) {
    entry.sent = true;
    if (!this._t.send(entry.msg)) {
      this._settle(entry.msg.id, new MoonwireError('connection lost', 'connection'));
    }
  }

  _settle(id, err, value) {
    const entry = this.pending.get(id);
    if (!entry) return false;
    this.pending.delete(id);
    this.timers.clearTimeout(entry.timer);
    if (err) entry.reject(err); else entry.resolve(value);
    return true;
  }

  _failPending(err, onlySent = false) {
    for (const [id, entry] of [...this.pending]) {
      if (entry.internal) { this.pending.delete(id); this.timers.clearTimeout(entry.timer); continue; }
      if (onlySent && !entry.sent) continue;
      this._settle(id, err);
    }
    if (!onlySent) this.queue = [];
  }

  // --- internals: connection ---

  _ctx(name) {
    const self = this;
    const ctx = {
      options: this.options,
      timers: this.timers,
      url: (path, params) => this._url(path, params),
      topics: () => [...this.topics].map(([t, rec]) => [t, rec.state.position()]),
      onOpen: () => { if (self._t === ctx.transport) self._onOpen(); },
      onMessage: (msg) => { if (self._t === ctx.transport) self._onMessage(msg); },
      onClose: (info) => { if (self._t === ctx.transport) self._onClose(info); },
      transport: null,
    };
    return ctx;
  }

  _url(path, params = {}) {
    const q = new URLSearchParams(params);
    const token = typeof this.options.token === 'function' ? this.options.token() : this.options.token;
    if (token) q.set('token', token);
    const qs = q.toString();
    return this.baseUrl + path + (qs ? `?${qs}` : '');
  }

  _start(name) {
    this.transport = name;
    const ctx = this._ctx(name);
    const t = this.factories[name](ctx);
    ctx.transport = t;
    this._t = t;
    this._openTimer = this.timers.setTimeout(() => {
      if (this._t !== t || this.state === 'open') return;
      t.close();
      this._onClose({ code: 0, reason: 'open timeout', opened: false });
    }, this.options.openTimeout);
    if (!t.bidirectional) {
      this._fillPositions().then(() => { if (this._t === t) t.open(); });
    } else t.open();
  }

  // Topics without a position (never saw an event or an ack) get one from a
  // zero-timeout poll before a one-way stream starts, so a reconnect of that
  // stream cannot miss their first events.
  async _fillPositions() {
    const missing = [...this.topics].filter(([, rec]) => rec.state.position() == null).map(([t]) => t);
    const fetchFn = this.options.fetch || globalThis.fetch;
    if (!missing.length || !fetchFn || this.options.positionProbe === false) return;
    try {
      const res = await fetchFn(this._url('/poll', { topics: missing.join(','), timeout: '0' }), { credentials: 'include', cache: 'no-store' });
      if (!res.ok) return;
      const body = await res.json();
      const pos = decodeCursor(body.cursor);
      if (!pos) return;
      for (const [t, p] of Object.entries(pos)) {
        const rec = this.topics.get(t);
        if (rec && rec.state.position() == null) rec.state.reset(p.seq, p.epoch);
      }
    } catch { /* the stream subscribes live */ }
  }

  _onOpen() {
    this.timers.clearTimeout(this._openTimer);
    this.failures = 0;
    this.attempt = 0;
    this._setState('open');
    this.emit('open', { transport: this.transport });
    for (const rec of this.topics.values()) { rec.acked = false; rec.inflight = false; }
    if (this._t.bidirectional) {
      this._subscribeAll([...this.topics.keys()]);
      this._startHeartbeat();
      const q = this.queue;
      this.queue = [];
      for (const entry of q) if (this.pending.has(entry.msg.id)) this._send(entry);
    } else {
      // One-way transports carry their topics in the URL: all are subscribed.
      for (const [topic, rec] of this.topics) this._subscribed(topic, rec, rec.state.position(), true, false);
      for (const entry of this.queue) {
        this._settle(entry.msg.id, new MoonwireError(`${entry.msg.type} needs the WebSocket transport (in use: ${this.transport})`, 'unsupported'));
      }
      this.queue = [];
      this._scheduleUpgrade();
    }
  }

  _onClose(info) {
    this.timers.clearTimeout(this._openTimer);
    this._stopHeartbeat();
    this._stopProbe();
    if (this._upgradeTimer) { this.timers.clearTimeout(this._upgradeTimer); this._upgradeTimer = null; }
    this._t = null;
    this._failPending(new MoonwireError(`connection lost (${info.reason || info.code})`, 'connection'), true);
    if (this.state === 'closed') return;
    const prev = this.transport;
    this._setState('reconnecting');
    this.emit('disconnect', { transport: prev, code: info.code, reason: info.reason });
    const delay = backoffDelay(this.attempt++, { base: this.options.backoffBase, max: this.options.backoffMax }, this.random);
    this._retryTimer = this.timers.setTimeout(() => this._retry(prev, info), delay);
  }

  async _retry(prev, info) {
    this._retryTimer = null;
    if (this.state === 'closed') return;
    let next = prev;
    // A failure before open counts toward a fallback only while the server
    // answers plain HTTP: a server that is down (or restarting) is no reason
    // to give up on a transport.
    if (!info.opened && (await this._reachable())) this.failures++;
    if (this.state === 'closed') return;
    if (!info.opened && this.failures >= this.options.fallbackAfter) {
      const d = nextTransport({ current: prev, order: this.order, failures: this.failures, reachable: true, fallbackAfter: this.options.fallbackAfter });
      if (d.fallback) {
        next = d.transport;
        this.failures = 0;
        this.attempt = 0;
        this._desired = next;
        this.emit('fallback', { from: prev, to: next, reason: info.reason || `close ${info.code}` });
        this._setState('fallback', next);
      }
    }
    this._setState('connecting', next);
    this._start(next);
  }

  async _reachable() {
    const fetchFn = this.options.fetch || globalThis.fetch;
    if (this.options.reachable) return this.options.reachable();
    if (!fetchFn) return true;
    try {
      const init = typeof window !== 'undefined' ? { mode: 'no-cors', cache: 'no-store' } : { cache: 'no-store' };
      await fetchFn(`${this.baseUrl}/healthz`, init);
      return true;
    } catch {
      return false;
    }
  }

  _setState(state, transport = this.transport) {
    if (this.state === state && this.transport === transport) return;
    this.state = state;
    this.transport = transport;
    this.emit('state', { state, transport });
  }

  _clearTimers() {
    for (const k of ['_retryTimer', '_openTimer', '_upgradeTimer']) {
      if (this[k]) this.timers.clearTimeout(this[k]);
      this[k] = null;
    }
    this._stopHeartbeat();
  }

  // --- internals: heartbeat (WebSocket) ---

  _startHeartbeat() {
    this._stopHeartbeat();
    this._pingTimer = this.timers.setInterval(() => {
      if (!this._t || !this._t.bidirectional) return;
      this._t.send({ type: 'ping', id: `p${this._nextId++}` });
      if (!this._pongTimer) {
        this._pongTimer = this.timers.setTimeout(() => {
          this._pongTimer = null;
          const t = this._t;
          if (!t) return;
          t.close(4000, 'dead connection');
          this._onClose({ code: 4000, reason: 'no pong', opened: true });
        }, this.options.pongTimeout);
      }
    }, this.options.pingInterval);
  }

  _stopHeartbeat() {
    if (this._pingTimer) this.timers.clearInterval(this._pingTimer);
    if (this._pongTimer) this.timers.clearTimeout(this._pongTimer);
    this._pingTimer = this._pongTimer = null;
  }

  _alive() {
    if (this._pongTimer) { this.timers.clearTimeout(this._pongTimer); this._pongTimer = null; }
  }

  // --- internals: upgrade back to WebSocket ---

  _scheduleUpgrade() {
    if (this._upgradeTimer || this.transport === this.order[0] || !this.options.upgradeInterval) return;
    this._upgradeTimer = this.timers.setTimeout(() => { this._upgradeTimer = null; this._tryUpgrade(); }, this.options.upgradeInterval);
  }

  _tryUpgrade() {
    if (this.state !== 'open' || this.transport === this.order[0]) return;
    const best = this.order[0];
    const ctx = this._ctx(best);
    let done = false;
    const fail = () => {
      if (done) return;
      done = true;
      this._stopProbe();
      this._scheduleUpgrade();
    };
    const probe = this.factories[best]({
      ...ctx,
      onOpen: () => {
        if (done) return;
        done = true;
        this.timers.clearTimeout(this._probeTimer);
        this._probe = null;
        if (this.state !== 'open') { probe.close(); return; }
        const from = this.transport;
        // Break the old transport first, then subscribe with the positions:
        // the new one replays whatever the old one did not deliver.
        this._t.close();
        ctx.transport = probe;
        this._t = probe;
        this.transport = best;
        this._desired = best;
        this.emit('upgrade', { from, to: best });
        this._setState('open', best);
        this._onOpen();
      },
      onMessage: (msg) => { if (this._t === probe) this._onMessage(msg); },
      onClose: (info) => { if (this._t === probe) this._onClose(info); else fail(); },
    });
    this._probe = probe;
    this._probeTimer = this.timers.setTimeout(fail, this.options.openTimeout);
    probe.open();
  }

  _stopProbe() {
    if (this._probeTimer) this.timers.clearTimeout(this._probeTimer);
    this._probeTimer = null;
    if (this._probe) { this._probe.close(); this._probe = null; }
  }

  // --- internals: subscriptions ---

  _queueSync() {
    if (this._syncQueued) return;
    this._syncQueued = true;
    queueMicrotask(() => {
      this._syncQueued = false;
      this._sync();
    });
  }

  _sync() {
    if (this.state !== 'open' || !this._t) return;
    const want = new Set(this.topics.keys());
    if (this._t.bidirectional) {
      const add = [...want].filter((t) => !this.topics.get(t).acked && !this.topics.get(t).inflight);
      if (add.length) this._subscribeAll(add);
      const drop = [...(this._dropped || [])];
      this._dropped = new Set();
      if (drop.length) this._t.send({ type: 'unsubscribe', id: `u${this._nextId++}`, topics: drop });
    } else {
      // One-way transports: a new stream (or poll) with the whole topic list.
      this._dropped = new Set();
      const t = this._t;
      this._fillPositions().then(() => {
        if (this._t !== t) return;
        t.restart();
        for (const [topic, rec] of this.topics) if (!rec.acked) this._subscribed(topic, rec, rec.state.position(), true, false);
      });
    }
  }

  _subscribeAll(topics) {
    if (!topics.length) return;
    const since = {};
    for (const t of topics) {
      const p = this.topics.get(t).state.position();
      if (p) since[t] = p;
      this.topics.get(t).inflight = true;
    }
    const id = `s${this._nextId++}`;
    const msg = { type: 'subscribe', id, topics };
    if (Object.keys(since).length) msg.since = since;
    const entry = { msg, internal: true, sent: true, timer: null };
    entry.resolve = (data) => {
      for (const t of topics) {
        const rec = this.topics.get(t);
        if (!rec) continue;
        rec.inflight = false;
        const r = data && data.topics && data.topics[t];
        if (r) this._subscribed(t, rec, r, r.recovered !== false, !!since[t]);
      }
    };
    entry.reject = (err) => {
      for (const t of topics) {
        const rec = this.topics.get(t);
        if (!rec) continue;
        rec.inflight = false;
        for (const s of rec.subs) s.handlers.onError && s.handlers.onError({ topic: t, code: err.code, reason: err.message });
      }
      this.emit('error', { topics, code: err.code, reason: err.message });
    };
    this.pending.set(id, entry);
    this._t.send(msg);
  }

  _subscribed(topic, rec, pos, recovered, hadSince) {
    rec.acked = true;
    const st = rec.state;
    if (!recovered && hadSince) {
      this._unrecovered(topic, rec, pos);
    } else if (pos) {
      if (hadSince) st.advance(undefined, pos.epoch); // replay follows the ack
      else if (st.position() == null) st.reset(pos.seq, pos.epoch);
      else st.advance(undefined, pos.epoch);
    }
    const p = st.position();
    for (const s of rec.subs) s.handlers.onSubscribed && s.handlers.onSubscribed({ topic, seq: p && p.seq, epoch: p && p.epoch });
    if (hadSince && recovered) {
      const info = { topic, recovered: true, seq: p && p.seq, epoch: p && p.epoch };
      for (const s of rec.subs) s.handlers.onRecovery && s.handlers.onRecovery(info);
      this.emit('recovery', info);
    }
  }

  _unrecovered(topic, rec, pos) {
    rec.state.reset(pos && pos.seq, pos && pos.epoch);
    const info = { topic, recovered: false, seq: pos && pos.seq, epoch: pos && pos.epoch };
    for (const s of rec.subs) s.handlers.onRecovery && s.handlers.onRecovery(info);
    this.emit('recovery', info);
  }

  _unsubscribe(topic, sub) {
    const rec = this.topics.get(topic);
    if (!rec || !rec.subs.delete(sub)) return;
    if (rec.subs.size) return;
    rec.state.dispose();
    this.topics.delete(topic);
    if (!this._dropped) this._dropped = new Set();
    if (rec.acked || rec.inflight) this._dropped.add(topic);
    this._queueSync();
  }

  // --- internals: messages ---

  _onMessage(msg) {
    this._alive();
    switch (msg.type) {
      case 'event': {
        const rec = this.topics.get(msg.topic);
        if (!rec) return;
        rec.state.push(msg, (ev) => {
          for (const s of rec.subs) s.handlers.onEvent && s.handlers.onEvent(ev);
          this.emit('event', ev);
        });
        return;
      }
      case 'ack': {
        const entry = this.pending.get(msg.id);
        if (!entry) return;
        this.pending.delete(msg.id);
        this.timers.clearTimeout(entry.timer);
        entry.resolve(msg.data || {});
        return;
      }
      case 'error': {
        const entry = this.pending.get(msg.id);
        const err = new MoonwireError(msg.reason || 'error', msg.code, msg);
        if (!entry) { this.emit('error', { code: msg.code, reason: msg.reason }); return; }
        this.pending.delete(msg.id);
        this.timers.clearTimeout(entry.timer);
        entry.reject(err);
        return;
      }
      case 'presence':
        this.emit('presence', msg);
        return;
      case 'recovery': {
        const rec = this.topics.get(msg.topic);
        if (rec && msg.recovered === false) this._unrecovered(msg.topic, rec, { seq: msg.seq, epoch: msg.epoch });
        return;
      }
      case 'positions':
        for (const [t, p] of Object.entries(msg.positions || {})) {
          const rec = this.topics.get(t);
          if (rec) rec.state.advance(p.seq, p.epoch);
        }
        return;
      case 'topic-error': {
        const rec = this.topics.get(msg.topic);
        if (rec) for (const s of rec.subs) s.handlers.onError && s.handlers.onError({ topic: msg.topic, code: msg.code, reason: msg.reason });
        this.emit('error', { topic: msg.topic, code: msg.code, reason: msg.reason });
        return;
      }
      case 'disconnect': {
        // SSE: the server ends the stream; reconnect as after any close.
        if (this._t && this._t.name === 'sse') {
          const t = this._t;
          t.close();
          this._onClose({ code: 4001, reason: msg.reason || 'disconnected', opened: true });
        }
        return;
      }
      default:
        return; // pong and anything new
    }
  }
}

export default Moonwire;
