// Issue #6: two nodes on one Redis behind a load balancer (a TCP proxy in
// this process). The client subscribes through the proxy on node A, events
// are published on node B the whole time, node A is stopped (SIGTERM: a
// rolling restart, the balancer takes A out first; SIGKILL: a crash, the
// balancer notices later) and the client reconnects through the proxy to B:
// every published event arrives exactly once, in seq order, recovered.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import EventSource from 'eventsource';
import { existsSync } from 'node:fs';
import { Moonwire } from '../../../examples/client/moonwire.js';
import { waitFor } from '../lib/server.js';
import { Redis, REDIS_SERVER, redisNode, Proxy, range } from './cluster-helpers.js';

const skip = existsSync(REDIS_SERVER) ? false : `no redis-server at ${REDIS_SERVER}`;

const N = 120; // events published on node B
const KILL_AT = 30; // node A goes away after this publish
const SWITCH_AT = 50; // the balancer sends (SIGKILL) or lets through (SIGTERM) new connections to B
const LIVE_FROM = 90; // the client is back (on B) before this one is published

for (const [transport, sig] of [['websocket', 'SIGTERM'], ['websocket', 'SIGKILL'], ['sse', 'SIGKILL'], ['longpoll', 'SIGTERM']]) {
  test(`two nodes on one Redis, ${transport}: node A ${sig} while publishing on B -> the client resumes on B, every event once, in order`,
    { skip, timeout: 90000 }, async () => {
      const redis = new Redis();
      let a; let b; let proxy; let c;
      try {
        await redis.start();
        a = await redisNode(redis);
        b = await redisNode(redis);
        proxy = await new Proxy(a.port).start();
        c = new Moonwire(proxy.url, {
          WebSocket, EventSource, transports: [transport], backoffBase: 100, backoffMax: 1000,
          openTimeout: 3000, pollTimeout: 5,
        });
        const states = [];
        c.on('state', (s) => states.push(s.state));
        const topic = `orders:${transport}-${sig}`;
        const got = []; const recoveries = []; const subscribed = [];
        c.subscribe(topic, {
          onEvent: (e) => got.push(e.seq),
          onRecovery: (r) => recoveries.push(r),
          onSubscribed: (s) => subscribed.push(s),
        });
        await waitFor(() => c.state === 'open' && subscribed.length > 0 && proxy.conns.some((x) => x.backend === a.port && x.connected),
          { what: 'subscribed through the proxy on node A' });

        const published = [];
        let stopping = null;
        let statesAtKill = 0;
        for (let i = 1; i <= N; i++) {
          const r = await b.publish(topic, 'ADDED', { entity_id: `o${i}` });
          published.push(r.seq);
          if (i === KILL_AT) {
            // cross-node delivery works before the failover: B's events reach A's client
            await waitFor(() => got.length >= KILL_AT, { what: `${KILL_AT} events through node A (${got.length})` });
            statesAtKill = states.length;
            if (sig === 'SIGTERM') {
              // out of the pool first (new connections wait for B), then drained
              proxy.hold();
              proxy.switchTo(b.port);
              stopping = a.kill('SIGTERM'); // publishing goes on meanwhile
            } else {
              await a.kill('SIGKILL'); // the balancer still sends new connections to A
            }
          }
          if (i === SWITCH_AT) {
            // events KILL_AT+1..SWITCH_AT were published while the client had no node
            // The client has no node now: it is reconnecting, or (long-poll
            // after a drain answered its poll) its next poll waits at the
            // balancer, which holds new connections.
            await waitFor(() => states.slice(statesAtKill).includes('reconnecting') ||
                (proxy.held && proxy.held.length > 0), { what: 'the client without a node' });
            proxy.switchTo(b.port);
            proxy.release();
          }
          if (i === LIVE_FROM) {
            await waitFor(() => c.state === 'open' && proxy.conns.some((x) => x.backend === b.port && x.connected),
              { timeout: 15000, what: `the client open again through node B (state ${c.state})` });
          }
        }
        await stopping;
        assert.ok(a.proc.exitCode !== null || a.proc.signalCode !== null, 'node A is gone');
        await waitFor(() => got.length >= N, { timeout: 20000, what: `all ${N} events (${got.length}: ...${got.slice(-5)})` });
        assert.deepEqual(published, range(1, N), 'the API answers: seqs 1..N');
        assert.deepEqual(got, published, 'every event once, in seq order');
        // A drained long-poll may move on with its next poll, held by the
        // balancer, without ever being in error: no "reconnecting" then.
        if (!(transport === 'longpoll' && sig === 'SIGTERM')) {
          assert.ok(states.includes('reconnecting'), JSON.stringify(states));
        }
        assert.equal(c.state, 'open');
        assert.equal(c.transport, transport);
        assert.ok(recoveries.every((r) => r.recovered !== false), `no recovered:false: ${JSON.stringify(recoveries)}`);
        // WebSocket resubscribes with {seq, epoch} and reports recovered:true;
        // SSE and long-poll carry the cursor and report only recovered:false
        if (transport === 'websocket') {
          assert.ok(recoveries.some((r) => r.recovered === true), `a recovery on node B: ${JSON.stringify(recoveries)}`);
        }
        // nothing arrives twice after settling either
        const settled = got.length;
        await b.publish(topic, 'ADDED', { entity_id: 'last' });
        await waitFor(() => got.length > settled, { what: 'one more live event' });
        assert.deepEqual(got, range(1, N + 1));
      } finally {
        if (c) c.close();
        if (proxy) await proxy.stop();
        if (a) await a.kill('SIGKILL');
        if (b) await b.stop();
        await redis.stop();
      }
    });
}
