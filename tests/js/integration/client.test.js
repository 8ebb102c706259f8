// The client against the real binary, with the real `ws` and `eventsource`
// packages (Node 20 has neither built in).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import EventSource from 'eventsource';
import { writeFileSync } from 'node:fs';
import { Moonwire } from '../../../examples/client/moonwire.js';
import { Server, waitFor, usersPolicy } from '../lib/server.js';

const clients = [];
const servers = [];
after(async () => {
  for (const c of clients) c.close();
  for (const s of servers) await s.stop();
});

async function server(opts) {
  const s = await new Server(opts).start();
  servers.push(s);
  return s;
}

function client(srv, opts = {}) {
  const c = new Moonwire(srv.url, {
    WebSocket, EventSource, backoffBase: 100, backoffMax: 1000, openTimeout: 3000, ...opts,
  });
  clients.push(c);
  return c;
}

const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

function collect(c, topic, handlers = {}) {
  const got = [];
  const recoveries = [];
  const subscribed = [];
  c.subscribe(topic, {
    onEvent: (e) => got.push(e.seq),
    onRecovery: (r) => recoveries.push(r),
    onSubscribed: (s) => subscribed.push(s),
    ...handlers,
  });
  return { got, recoveries, subscribed };
}

test('publish over the API reaches a WebSocket subscriber; publish with ack; presence', async () => {
  const srv = await server({ policy: usersPolicy() });
  const c = client(srv, { token: 'alice' });
  const { got, subscribed } = collect(c, 'gift-list:family-123');
  await waitFor(() => subscribed.length > 0, { what: 'subscribe ack' });
  assert.equal(c.transport, 'websocket');
  const r = await srv.publish('gift-list:family-123', 'UPDATED', { entity_id: 'gift-7', payload: { name: 'Bike' } });
  assert.equal(r.seq, 1);
  await waitFor(() => got.length === 1, { what: 'event 1' });
  const ack = await c.publish('gift-list:family-123', 'CUSTOM', { payload: { text: 'hi' } });
  assert.deepEqual(ack, { status: 'delivered', seq: 2 });
  await waitFor(() => got.length === 2, { what: 'event 2' });
  assert.deepEqual(got, [1, 2]);
  const p = await c.presence('gift-list:family-123');
  assert.deepEqual(p.users, ['alice']);
  await assert.rejects(c.publish('bad topic', 'X', {}), (e) => e.code === 400);
});

for (const transport of ['websocket', 'sse', 'longpoll']) {
  test(`${transport}: server-side disconnect while publishing continues -> every event once, in order`, async () => {
    const srv = await server({ policy: usersPolicy() });
    const c = client(srv, { token: `kick-${transport}`, transports: [transport], pollTimeout: 5 });
    const topic = `orders:${transport}`;
    const other = `audit:${transport}`;
    const a = collect(c, topic);
    const b = collect(c, other);
    await waitFor(() => c.state === 'open' && a.subscribed.length && b.subscribed.length, { what: 'open' });
    let disconnects = 0;
    c.on('disconnect', () => disconnects++);
    const N = 80;
    const publisher = (async () => {
      for (let i = 1; i <= N; i++) {
        await srv.publish(topic, 'ADDED', { i });
        if (i % 4 === 0) await srv.publish(other, 'UPDATED', { i });
        if (i === 20 || i === 50) {
          // a connection (or a waiting poll) of this user exists, then it is cut
          await waitFor(async () => c.state === 'open' && (await srv.disconnect(`kick-${transport}`)).disconnected > 0,
            { what: 'a connection to cut' });
        }
      }
    })();
    await publisher;
    await waitFor(() => a.got.length >= N && b.got.length >= N / 4, { timeout: 20000, what: `all events (${a.got.length}/${N})` });
    assert.ok(disconnects >= 2, `disconnects: ${disconnects}`);
    assert.deepEqual(a.got, range(1, N));
    assert.deepEqual(b.got, range(1, N / 4));
    assert.ok(a.recoveries.every((r) => r.recovered), JSON.stringify(a.recoveries));
    assert.equal(c.transport, transport);
  });
}

test('server restart (new epoch): recovered:false, then live events of the new epoch', async () => {
  const first = await server();
  const port = first.port;
  const c = client(first);
  const { got, recoveries, subscribed } = collect(c, 'room:restart');
  await waitFor(() => subscribed.length === 1, { what: 'subscribed' });
  for (let i = 0; i < 5; i++) await first.publish('room:restart');
  await waitFor(() => got.length === 5, { what: '5 events' });
  const epoch1 = c.positions()['room:restart'].epoch;
  await first.stop();
  await waitFor(() => c.state === 'reconnecting', { what: 'reconnecting' });
  const second = await server({ port });
  await waitFor(() => recoveries.length === 1, { timeout: 15000, what: 'recovery signal' });
  assert.equal(recoveries[0].recovered, false);
  assert.notEqual(recoveries[0].epoch, epoch1);
  assert.equal(c.transport, 'websocket');
  await second.publish('room:restart');
  await waitFor(() => got.length === 6, { what: 'event of the new epoch' });
  assert.deepEqual(got, [1, 2, 3, 4, 5, 1]);
});

test('fallback: WebSocket refused by the policy -> SSE; SSE refused too -> long-poll', async () => {
  for (const [deny, expect] of [[['websocket'], 'sse'], [['websocket', 'sse'], 'longpoll']]) {
    const srv = await server({ policy: usersPolicy(deny) });
    const c = client(srv, { token: 'fb', pollTimeout: 5 });
    const fallbacks = [];
    c.on('fallback', (f) => fallbacks.push(`${f.from}>${f.to}`));
    const { got } = collect(c, 'news');
    await waitFor(() => c.state === 'open' && c.transport === expect, { timeout: 15000, what: `open on ${expect}` });
    for (let i = 0; i < 3; i++) await srv.publish('news');
    await waitFor(() => got.length === 3, { what: `events over ${expect}` });
    assert.deepEqual(got, [1, 2, 3]);
    assert.deepEqual(fallbacks, expect === 'sse' ? ['websocket>sse'] : ['websocket>sse', 'sse>longpoll']);
    await assert.rejects(c.publish('news', 'X', {}), (e) => e.code === 'unsupported');
    c.close();
  }
});

test('upgrade: back to WebSocket once the policy allows it again, without loss or duplicates', async () => {
  const policy = usersPolicy(['websocket']);
  const srv = await server({ policy });
  const c = client(srv, { token: 'up', upgradeInterval: 300, pollTimeout: 5 });
  const upgrades = [];
  c.on('upgrade', (u) => upgrades.push(u));
  const { got } = collect(c, 'feed');
  await waitFor(() => c.state === 'open' && c.transport === 'sse', { timeout: 15000, what: 'SSE' });
  const N = 40;
  const publisher = (async () => {
    for (let i = 1; i <= N; i++) {
      await srv.publish('feed', 'ADDED', { i });
      if (i === 10) {
        writeFileSync(policy, 'function on_connect(req) return { user_id = req.token } end\n');
        await srv.api('POST', '/api/reload');
      }
      if (i === 25) await waitFor(() => upgrades.length === 1, { timeout: 10000, what: 'upgrade' });
    }
  })();
  await publisher;
  await waitFor(() => got.length >= N, { timeout: 10000, what: 'all events' });
  assert.deepEqual(upgrades, [{ from: 'sse', to: 'websocket' }]);
  assert.equal(c.transport, 'websocket');
  assert.deepEqual(got, range(1, N));
});
