// Unit tests of the client logic with fake transports and a manual clock.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Moonwire, TopicState, backoffDelay, nextTransport, encodeCursor, decodeCursor,
} from '../../../examples/client/moonwire.js';
import { FakeClock, fakeTransports, ev, flush } from '../lib/fakes.js';

function client(opts = {}, behaviour = {}) {
  const clock = new FakeClock();
  const fakes = fakeTransports(behaviour);
  const mw = new Moonwire('http://127.0.0.1:1', {
    timers: clock,
    transportFactories: fakes.factories,
    reachable: () => true,
    positionProbe: false,
    random: () => 0.5,
    ...opts,
  });
  return { mw, clock, fakes };
}

function states(mw) {
  const seen = [];
  mw.on('state', (s) => seen.push(`${s.state}:${s.transport}`));
  return seen;
}

// --- backoff -------------------------------------------------------------------

test('backoff: full jitter within [0, min(30 s, base * 2^attempt))', () => {
  for (let attempt = 0; attempt < 40; attempt++) {
    const ceiling = Math.min(30000, 500 * 2 ** attempt);
    assert.equal(backoffDelay(attempt, {}, () => 0), 0);
    const top = backoffDelay(attempt, {}, () => 0.999999);
    assert.ok(top < ceiling && top >= ceiling - 1, `attempt ${attempt}: ${top} vs ${ceiling}`);
    for (let i = 0; i < 50; i++) {
      const d = backoffDelay(attempt);
      assert.ok(d >= 0 && d < ceiling && d <= 30000);
    }
  }
  assert.equal(backoffDelay(100, { base: 1000, max: 30000 }, () => 0.5), 15000);
  // jitter: many draws at the cap are spread out, not one value
  const draws = new Set(Array.from({ length: 200 }, () => backoffDelay(20)));
  assert.ok(draws.size > 100);
});

test('backoff: the client waits the jittered delay, growing per failed attempt', async () => {
  const draws = [];
  const { mw, clock, fakes } = client({ random: () => { draws.push(1); return 0.999; }, fallbackAfter: 100 }, { websocket: 'refuse' });
  await clock.advance(0);
  assert.equal(fakes.log.length, 1);
  const expected = [499, 999, 1998, 3996, 7992, 15984, 29970, 29970];
  for (const d of expected) {
    await clock.advance(d - 1);
    const before = fakes.log.length;
    await clock.advance(1);
    assert.equal(fakes.log.length, before + 1, `retry after ${d} ms`);
  }
  mw.close();
});

// --- fallback decisions ----------------------------------------------------------

test('fallback decision: only when a reachable server keeps refusing a transport', () => {
  const order = ['websocket', 'sse', 'longpoll'];
  assert.deepEqual(nextTransport({ current: 'websocket', order, failures: 1, reachable: true }), { transport: 'websocket', fallback: false });
  assert.deepEqual(nextTransport({ current: 'websocket', order, failures: 2, reachable: true }), { transport: 'sse', fallback: true });
  assert.deepEqual(nextTransport({ current: 'websocket', order, failures: 5, reachable: false }), { transport: 'websocket', fallback: false });
  assert.deepEqual(nextTransport({ current: 'sse', order, failures: 2, reachable: true }), { transport: 'longpoll', fallback: true });
  assert.deepEqual(nextTransport({ current: 'longpoll', order, failures: 9, reachable: true }), { transport: 'longpoll', fallback: false });
  assert.deepEqual(nextTransport({ current: 'websocket', order, failures: 3, reachable: true, opened: true }), { transport: 'websocket', fallback: false });
  assert.deepEqual(nextTransport({ current: 'websocket', order, failures: 1, reachable: true, fallbackAfter: 1 }), { transport: 'sse', fallback: true });
});

test('fallback: WebSocket refused -> SSE -> long-poll, with state events', async () => {
  const { mw, clock, fakes } = client({ upgradeInterval: 0 }, { websocket: 'refuse', sse: 'refuse' });
  const seen = states(mw);
  const fallbacks = [];
  mw.on('fallback', (f) => fallbacks.push(`${f.from}>${f.to}`));
  mw.subscribe('a', () => {});
  await clock.advance(60000);
  assert.deepEqual(fallbacks, ['websocket>sse', 'sse>longpoll']);
  assert.equal(mw.transport, 'longpoll');
  assert.equal(mw.state, 'open');
  assert.deepEqual(fakes.log.map((t) => t.name), ['websocket', 'websocket', 'sse', 'sse', 'longpoll']);
  assert.ok(seen.includes('connecting:websocket'));
  assert.ok(seen.includes('reconnecting:websocket'));
  assert.ok(seen.includes('fallback:sse'));
  assert.ok(seen.includes('open:longpoll'));
  mw.close();
  assert.equal(mw.state, 'closed');
});

test('fallback: no change of transport while the server is unreachable', async () => {
  const { mw, clock, fakes } = client({ reachable: () => false }, { websocket: 'refuse' });
  await clock.advance(120000);
  assert.ok(fakes.log.length > 5);
  assert.ok(fakes.log.every((t) => t.name === 'websocket'));
  mw.close();
});

test('fallback: failures while the server is down do not count (a restart is no reason to fall back)', async () => {
  let up = false;
  const behaviour = { websocket: 'refuse' };
  const { mw, clock, fakes } = client({ reachable: () => up }, behaviour);
  const fallbacks = [];
  mw.on('fallback', (f) => fallbacks.push(f));
  await clock.advance(5000); // several refused attempts, server unreachable
  assert.ok(fakes.log.length >= 3);
  up = true; // the server is back: the next failure counts, once
  await clock.advance(700);
  behaviour.websocket = 'auto';
  await clock.advance(30000);
  assert.deepEqual(fallbacks, []);
  assert.equal(mw.transport, 'websocket');
  assert.equal(mw.state, 'open');
  mw.close();
});

test('fallback: a transport that never opens times out and counts as a failure', async () => {
  const { mw, clock, fakes } = client({ openTimeout: 1000 }, { websocket: 'hang' });
  const fallbacks = [];
  mw.on('fallback', (f) => fallbacks.push(f));
  await clock.advance(1000);
  assert.equal(mw.state, 'reconnecting');
  await clock.advance(10000);
  assert.equal(fallbacks.length, 1);
  assert.equal(fallbacks[0].reason, 'open timeout');
  assert.equal(mw.transport, 'sse');
  assert.ok(fakes.log[0].closed);
  mw.close();
});

test('upgrade: while on SSE the client probes WebSocket and moves back, resubscribing from its positions', async () => {
  const behaviour = { websocket: 'refuse' };
  const { mw, clock, fakes } = client({ upgradeInterval: 5000 }, behaviour);
  const got = [];
  mw.subscribe('a', (e) => got.push(e.seq));
  await clock.advance(3000);
  assert.equal(mw.transport, 'sse');
  const sse = fakes.last('sse');
  sse.message(ev('a', 1));
  sse.message({ type: 'positions', positions: { a: { seq: 1, epoch: 'E' } } });
  // the probe fails while WebSocket is still refused: stay on SSE
  await clock.advance(5000);
  assert.equal(mw.transport, 'sse');
  behaviour.websocket = 'auto';
  const upgrades = [];
  mw.on('upgrade', (u) => upgrades.push(u));
  await clock.advance(5000);
  assert.deepEqual(upgrades, [{ from: 'sse', to: 'websocket' }]);
  assert.ok(sse.closed);
  const ws = fakes.last('websocket');
  assert.equal(mw.transport, 'websocket');
  assert.equal(mw.state, 'open');
  const sub = ws.sent.find((m) => m.type === 'subscribe');
  assert.deepEqual(sub.since, { a: { seq: 1, epoch: 'E' } });
  sse.message(ev('a', 2)); // a late message of the old transport is ignored
  ws.message({ type: 'ack', id: sub.id, data: { topics: { a: { seq: 2, epoch: 'E', recovered: true } } } });
  ws.message(ev('a', 2));
  assert.deepEqual(got, [1, 2]);
  mw.close();
});

// --- ordering and dedupe ----------------------------------------------------------

test('topic state: in seq order, duplicates dropped, a gap waits for the missing event', async () => {
  const clock = new FakeClock();
  const st = new TopicState('a', { reorderTimeout: 100, timers: clock });
  const out = [];
  const d = (e) => out.push(e.seq);
  st.push(ev('a', 5), d); // first event: live from here
  st.push(ev('a', 7), d); // gap: held
  st.push(ev('a', 8), d);
  assert.deepEqual(out, [5]);
  st.push(ev('a', 6), d); // fills it
  assert.deepEqual(out, [5, 6, 7, 8]);
  st.push(ev('a', 7), d);
  st.push(ev('a', 4), d);
  st.push(ev('a', 8), d);
  assert.deepEqual(out, [5, 6, 7, 8]);
  assert.equal(st.stats.duplicates, 3);
  // a gap nobody fills (e.g. filtered by the policy) is skipped after the timeout
  st.push(ev('a', 11), d);
  st.push(ev('a', 10), d);
  st.push(ev('a', 10), d); // duplicate of a held event
  assert.deepEqual(out, [5, 6, 7, 8]);
  await clock.advance(100);
  assert.deepEqual(out, [5, 6, 7, 8, 10, 11]);
  assert.equal(st.stats.skipped, 1);
  assert.deepEqual(st.position(), { seq: 11, epoch: '' });
});

test('topic state: reorderTimeout 0 delivers at once; a full buffer flushes', () => {
  const out = [];
  const st0 = new TopicState('a', { reorderTimeout: 0 });
  st0.reset(1, 'E');
  st0.push(ev('a', 3), (e) => out.push(e.seq));
  st0.push(ev('a', 2), (e) => out.push(e.seq));
  assert.deepEqual(out, [3]);
  const clock = new FakeClock();
  const st = new TopicState('b', { reorderTimeout: 1000, reorderMax: 3, timers: clock });
  const got = [];
  st.reset(0, 'E');
  for (const s of [2, 3, 4, 5]) st.push(ev('b', s), (e) => got.push(e.seq));
  assert.deepEqual(got, [2, 3, 4, 5]);
  assert.equal(clock.pending(), 0);
});

test('client: events are delivered in order and once, across a reconnect with replay overlap', async () => {
  const { mw, clock, fakes } = client();
  const got = [];
  mw.subscribe('a', (e) => got.push(e.seq));
  await clock.advance(0);
  const ws1 = fakes.last('websocket');
  const s1 = ws1.sent.find((m) => m.type === 'subscribe');
  assert.deepEqual(s1.topics, ['a']);
  assert.equal(s1.since, undefined);
  ws1.message({ type: 'ack', id: s1.id, data: { topics: { a: { seq: 10, epoch: 'E1', recovered: true } } } });
  ws1.message(ev('a', 11));
  ws1.message(ev('a', 13));
  ws1.message(ev('a', 12));
  ws1.message(ev('a', 12));
  assert.deepEqual(got, [11, 12, 13]);
  ws1.drop();
  assert.equal(mw.state, 'reconnecting');
  await clock.advance(1000);
  const ws2 = fakes.last('websocket');
  assert.notEqual(ws1, ws2);
  const s2 = ws2.sent.find((m) => m.type === 'subscribe');
  assert.deepEqual(s2.since, { a: { seq: 13, epoch: 'E1' } });
  ws2.message({ type: 'ack', id: s2.id, data: { topics: { a: { seq: 16, epoch: 'E1', recovered: true } } } });
  for (const s of [12, 13, 14, 15, 16, 17]) ws2.message(ev('a', s));
  assert.deepEqual(got, [11, 12, 13, 14, 15, 16, 17]);
  mw.close();
});

test('client: resubscribe positions per topic; topics without a position subscribe live', async () => {
  const { mw, clock, fakes } = client();
  mw.subscribe('a', () => {});
  mw.subscribe('b', () => {});
  mw.subscribe('c', () => {}, { since: { seq: 3, epoch: 'X' } });
  await clock.advance(0);
  const ws1 = fakes.last();
  const s1 = ws1.sent.find((m) => m.type === 'subscribe');
  assert.deepEqual(s1.topics, ['a', 'b', 'c']);
  assert.deepEqual(s1.since, { c: { seq: 3, epoch: 'X' } });
  ws1.message({ type: 'ack', id: s1.id, data: { topics: {
    a: { seq: 4, epoch: 'E', recovered: true }, b: { seq: 0, epoch: 'E', recovered: true }, c: { seq: 5, epoch: 'X', recovered: true } } } });
  ws1.message(ev('a', 5));
  ws1.message(ev('c', 4));
  assert.deepEqual(mw.positions(), { a: { seq: 5, epoch: 'E' }, b: { seq: 0, epoch: 'E' }, c: { seq: 4, epoch: 'X' } });
  ws1.drop();
  await clock.advance(1000);
  const s2 = fakes.last().sent.find((m) => m.type === 'subscribe');
  assert.deepEqual(s2.since, { a: { seq: 5, epoch: 'E' }, b: { seq: 0, epoch: 'E' }, c: { seq: 4, epoch: 'X' } });
  mw.close();
});

test('client: recovered:false is signalled per topic and the position jumps to the current one', async () => {
  const { mw, clock, fakes } = client();
  const recA = [];
  const recB = [];
  const global = [];
  const got = [];
  mw.on('recovery', (r) => global.push(r));
  mw.subscribe('a', { onEvent: (e) => got.push(e.seq), onRecovery: (r) => recA.push(r) });
  mw.subscribe('b', { onRecovery: (r) => recB.push(r) });
  await clock.advance(0);
  let ws = fakes.last();
  let s = ws.sent.find((m) => m.type === 'subscribe');
  ws.message({ type: 'ack', id: s.id, data: { topics: { a: { seq: 2, epoch: 'E1', recovered: true }, b: { seq: 7, epoch: 'E1', recovered: true } } } });
  assert.deepEqual(recA, []); // a first subscription says nothing about recovery
  ws.message(ev('a', 3));
  ws.drop();
  await clock.advance(1000);
  ws = fakes.last();
  s = ws.sent.find((m) => m.type === 'subscribe');
  // the server restarted: a new epoch, history gone
  ws.message({ type: 'ack', id: s.id, data: { topics: { a: { seq: 0, epoch: 'E2', recovered: false }, b: { seq: 7, epoch: 'E1', recovered: true } } } });
  assert.deepEqual(recA, [{ topic: 'a', recovered: false, seq: 0, epoch: 'E2' }]);
  assert.deepEqual(recB, [{ topic: 'b', recovered: true, seq: 7, epoch: 'E1' }]);
  assert.equal(global.length, 2);
  ws.message(ev('a', 1)); // the new epoch's first event is not a duplicate
  assert.deepEqual(got, [3, 1]);
  assert.deepEqual(mw.positions().a, { seq: 1, epoch: 'E2' });
  mw.close();
});

test('client: SSE and long-poll recovery messages signal recovered:false', async () => {
  const { mw, clock, fakes } = client({ transports: ['sse'] });
  const rec = [];
  mw.subscribe('a', { onRecovery: (r) => rec.push(r) }, { since: { seq: 4, epoch: 'old' } });
  await clock.advance(0);
  const sse = fakes.last();
  assert.deepEqual(sse.topicsAtOpen, [['a', { seq: 4, epoch: 'old' }]]);
  sse.message({ type: 'recovery', topic: 'a', recovered: false, seq: 9, epoch: 'new' });
  assert.deepEqual(rec, [{ topic: 'a', recovered: false, seq: 9, epoch: 'new' }]);
  assert.deepEqual(mw.positions().a, { seq: 9, epoch: 'new' });
  mw.close();
});

// --- heartbeat, requests ----------------------------------------------------------

test('heartbeat: pings; a connection silent after a ping is declared dead and replaced', async () => {
  const { mw, clock, fakes } = client({ pingInterval: 1000, pongTimeout: 500 });
  await clock.advance(0);
  const ws = fakes.last();
  await clock.advance(1000);
  const ping = ws.sent.find((m) => m.type === 'ping');
  assert.ok(ping);
  ws.message({ type: 'pong', id: ping.id });
  await clock.advance(1000); // second ping, answered by any message
  ws.message(ev('x', 1));
  await clock.advance(400);
  assert.equal(mw.state, 'open');
  await clock.advance(600); // third ping, no answer
  await clock.advance(500);
  assert.ok(ws.closed);
  assert.equal(mw.state, 'reconnecting');
  await clock.advance(1000);
  assert.notEqual(fakes.last(), ws);
  assert.equal(mw.state, 'open');
  mw.close();
});

test('publish: resolves on ack, rejects on error, waits for the connection, fails on SSE', async () => {
  const { mw, clock, fakes } = client({}, { websocket: 'manual' });
  const p1 = mw.publish('room:1', 'CUSTOM', { payload: { text: 'hi' } }); // queued: not open yet
  await clock.advance(0);
  const ws = fakes.last();
  assert.equal(ws.sent.length, 0);
  ws.open_();
  const m1 = ws.sent.find((m) => m.type === 'publish');
  assert.equal(m1.topic, 'room:1');
  assert.deepEqual(m1.data, { payload: { text: 'hi' } });
  ws.message({ type: 'ack', id: m1.id, data: { status: 'delivered', seq: 3 } });
  assert.deepEqual(await p1, { status: 'delivered', seq: 3 });
  const p2 = mw.publish('room:1', 'CUSTOM', {});
  const m2 = ws.sent.at(-1);
  ws.message({ type: 'error', id: m2.id, code: 403, reason: 'denied' });
  await assert.rejects(p2, (e) => e.code === 403 && e.message === 'denied');
  const p3 = mw.publish('room:1', 'CUSTOM', {});
  ws.drop(); // sent, no ack: the outcome is unknown, the promise fails
  await assert.rejects(p3, (e) => e.code === 'connection');
  const p4 = mw.publish('room:1', 'CUSTOM', {});
  await clock.advance(10000);
  await assert.rejects(p4, (e) => e.code === 'timeout');
  mw.close();

  const s = client({ transports: ['sse'] });
  await s.clock.advance(0);
  await assert.rejects(s.mw.publish('a', 'X', {}), (e) => e.code === 'unsupported');
  s.mw.close();
});

test('unsubscribe: the last subscriber of a topic unsubscribes it; SSE restarts its stream', async () => {
  const { mw, clock, fakes } = client();
  const s1 = mw.subscribe('a', () => {});
  const s2 = mw.subscribe('a', () => {});
  await clock.advance(0);
  const ws = fakes.last();
  const sub = ws.sent.find((m) => m.type === 'subscribe');
  ws.message({ type: 'ack', id: sub.id, data: { topics: { a: { seq: 0, epoch: 'E', recovered: true } } } });
  s1.unsubscribe();
  await flush();
  assert.equal(ws.sent.filter((m) => m.type === 'unsubscribe').length, 0);
  s2.unsubscribe();
  await flush();
  assert.deepEqual(ws.sent.find((m) => m.type === 'unsubscribe').topics, ['a']);
  mw.close();

  const c = client({ transports: ['sse'] });
  c.mw.subscribe('a', () => {});
  await c.clock.advance(0);
  const sse = c.fakes.last();
  c.mw.subscribe('b', () => {});
  await flush();
  assert.equal(sse.restarts, 1);
  assert.deepEqual(sse.topicsAtOpen.map(([t]) => t), ['a', 'b']);
  c.mw.close();
});

test('server disconnect (SSE message) reconnects from the positions', async () => {
  const { mw, clock, fakes } = client({ transports: ['sse'] });
  const got = [];
  mw.subscribe('a', (e) => got.push(e.seq), { since: { seq: 1, epoch: 'E' } });
  await clock.advance(0);
  const sse = fakes.last();
  sse.message(ev('a', 2));
  sse.message({ type: 'disconnect', reason: 'disconnected' });
  assert.ok(sse.closed);
  assert.equal(mw.state, 'reconnecting');
  await clock.advance(1000);
  assert.deepEqual(fakes.last().topicsAtOpen, [['a', { seq: 2, epoch: 'E' }]]);
  mw.close();
});

// --- cursors ------------------------------------------------------------------------

test('cursor: the server format round-trips', () => {
  const server = 'eyJhIjpbMSwiYzc3ZGIzNjMyMDVlOTMzMSJdLCJiIjpbMCwiYzc3ZGIzNjMyMDVlOTMzMSJdfQ';
  assert.deepEqual(decodeCursor(server), { a: { seq: 1, epoch: 'c77db363205e9331' }, b: { seq: 0, epoch: 'c77db363205e9331' } });
  assert.equal(encodeCursor(decodeCursor(server)), server);
  const odd = { 'gift-list:ü/?+': { seq: 42, epoch: 'e' } };
  assert.deepEqual(decodeCursor(encodeCursor(odd)), odd);
  assert.match(encodeCursor(odd), /^[A-Za-z0-9_-]+$/);
  assert.equal(decodeCursor('%%%'), null);
  assert.equal(decodeCursor(''), null);
});
