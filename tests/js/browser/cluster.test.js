// Issue #6 in the browser: the demo page in headless Chromium, loaded through
// a load balancer (a TCP proxy in this process, so the page's origin is the
// proxy) in front of two nodes on one Redis. Events are published on node B
// the whole time; node A, which serves the page, is stopped; the page
// reconnects through the proxy to node B and shows every event once, in order.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { waitFor } from '../lib/server.js';
import { Redis, REDIS_SERVER, redisNode, Proxy, range } from '../integration/cluster-helpers.js';

const CHROMIUM = process.env.MW_CHROMIUM || '/usr/bin/chromium';
const skip = !existsSync(CHROMIUM) ? `no Chromium at ${CHROMIUM} (apt-get install chromium)`
  : !existsSync(REDIS_SERVER) ? `no redis-server at ${REDIS_SERVER}` : false;

let context;
let profile;

before(async () => {
  if (skip) return;
  profile = mkdtempSync(join(tmpdir(), 'mw-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 860 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  if (context) await context.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

const demo = (page, expr) => page.evaluate(expr);
const pageWait = (page, expr, what, timeout = 15000) => waitFor(() => demo(page, expr), { timeout, interval: 25, what });
const seqsOf = (page, topic) => demo(page, `window.demo.events.filter(e => e.topic === ${JSON.stringify(topic)}).map(e => e.seq)`);

const N = 100;
const KILL_AT = 25;
const SWITCH_AT = 45;
const LIVE_FROM = 75;

for (const sig of ['SIGTERM', 'SIGKILL']) {
  test(`demo page behind a balancer, two nodes on one Redis: node A ${sig} while publishing on B -> the page resumes on B, every event once, in order`,
    { skip, timeout: 120000 }, async () => {
      const redis = new Redis();
      let a; let b; let proxy; let page;
      try {
        await redis.start();
        a = await redisNode(redis);
        b = await redisNode(redis);
        proxy = await new Proxy(a.port).start();
        page = await context.newPage();
        const errors = [];
        page.on('pageerror', (e) => errors.push(String(e)));
        const topic = `orders:browser-${sig}`;
        await page.goto(`${proxy.url}/?topics=${encodeURIComponent(topic)}&backoffBase=100&backoffMax=1000&openTimeout=3000`);
        assert.equal(await demo(page, 'location.origin'), proxy.url);
        await pageWait(page, `document.body.dataset.state === 'open' && window.demo.client.positions()[${JSON.stringify(topic)}] != null`,
          'page open and subscribed');
        assert.equal(await page.textContent('#transport'), 'websocket');
        assert.ok(proxy.conns.every((x) => x.backend === a.port), 'page and its connection served by node A');

        const published = [];
        let stopping = null;
        let statesAtKill = 0;
        for (let i = 1; i <= N; i++) {
          const r = await b.publish(topic, 'ADDED', { entity_id: `o${i}` });
          published.push(r.seq);
          if (i === KILL_AT) {
            await pageWait(page, `window.demo.events.length >= ${KILL_AT}`, `${KILL_AT} events through node A`);
            statesAtKill = await demo(page, 'window.demo.states.length');
            if (sig === 'SIGTERM') {
              proxy.hold();
              proxy.switchTo(b.port);
              stopping = a.kill('SIGTERM');
            } else {
              await a.kill('SIGKILL');
            }
          }
          if (i === SWITCH_AT) {
            await pageWait(page, `window.demo.states.slice(${statesAtKill}).some(s => s.state === 'reconnecting')`, 'the page reconnecting');
            proxy.switchTo(b.port);
            proxy.release();
          }
          if (i === LIVE_FROM) {
            await pageWait(page, `document.body.dataset.state === 'open'`, 'the page open again');
            assert.ok(proxy.conns.some((x) => x.backend === b.port && x.connected), 'the page reconnected through node B');
          }
        }
        await stopping;
        assert.ok(a.proc.exitCode !== null || a.proc.signalCode !== null, 'node A is gone');
        await pageWait(page, `window.demo.events.length >= ${N}`, `${N} events`, 20000);
        assert.deepEqual(published, range(1, N), 'the API answers: seqs 1..N');
        assert.deepEqual(await seqsOf(page, topic), published, 'window.demo.events: every event once, in order');
        const rows = await page.$$eval(`#events tr[data-topic="${topic}"]`, (trs) => trs.map((tr) => Number(tr.dataset.seq)));
        assert.deepEqual(rows.reverse(), published, 'the event table: every event once, in order');
        const recoveries = await demo(page, 'window.demo.recoveries');
        assert.ok(recoveries.every((r) => r.recovered !== false), `no recovered:false: ${JSON.stringify(recoveries)}`);
        assert.ok(recoveries.some((r) => r.recovered === true), `a recovery on node B: ${JSON.stringify(recoveries)}`);
        assert.deepEqual(await demo(page, 'window.demo.refetches'), []);
        assert.equal(await page.textContent('#transport'), 'websocket');
        assert.deepEqual(errors, []);
      } finally {
        if (page) await page.close().catch(() => {});
        if (proxy) await proxy.stop();
        if (a) await a.kill('SIGKILL');
        if (b) await b.stop();
        await redis.stop();
      }
    });
}
