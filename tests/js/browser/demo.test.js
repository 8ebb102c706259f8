// End to end: the demo page served by the binary, in headless Chromium
// (Debian's, driven by playwright-core; no browser download).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { Server, waitFor, usersPolicy, repoRoot } from '../lib/server.js';

const CHROMIUM = process.env.MW_CHROMIUM || '/usr/bin/chromium';
const skip = existsSync(CHROMIUM) ? false : `no Chromium at ${CHROMIUM} (apt-get install chromium)`;

let context;
let profile;
const servers = [];

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
  for (const s of servers) await s.stop();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

async function server(opts) {
  const s = await new Server(opts).start();
  servers.push(s);
  return s;
}

async function openDemo(srv, query) {
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.errors = errors;
  await page.goto(`${srv.url}/?${query}`);
  return page;
}

const demo = (page, expr) => page.evaluate(expr);
const pageWait = (page, expr, what, timeout = 15000) => waitFor(() => demo(page, expr), { timeout, interval: 25, what });
const seqsOf = (page, topic) => demo(page, `window.demo.events.filter(e => e.topic === ${JSON.stringify(topic)}).map(e => e.seq)`);
const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

test('demo page: live events from /api/publish, publish from the page, presence; screenshot', { skip }, async () => {
  const srv = await server({ policy: usersPolicy() });
  const page = await openDemo(srv, 'topics=gift-list:family-123&token=alice');
  await pageWait(page, `document.body.dataset.state === 'open' && window.demo.client.positions()['gift-list:family-123'] != null`, 'page open and subscribed');
  assert.equal(await page.textContent('#transport'), 'websocket');
  const gifts = [['ADDED', 'gift-7', { name: 'Bike' }], ['UPDATED', 'gift-7', { name: 'Red bike' }],
    ['ADDED', 'gift-8', { name: 'Kite' }], ['STATUS_CHANGED', 'gift-8', { status: 'bought' }], ['DELETED', 'gift-3', {}]];
  for (const [event, entity, payload] of gifts) {
    await srv.publish('gift-list:family-123', event, { entity_id: entity, payload, user_id: 'u1', tenant_id: 'family' });
  }
  await pageWait(page, 'window.demo.events.length === 5', '5 events');
  assert.equal(await page.locator('#events tr[data-seq="1"] td.event').textContent(), 'ADDED');
  // publish from the page: a WebSocket publish message, acked with its seq
  await page.fill('#pub-topic', 'gift-list:family-123');
  await page.fill('#pub-event', 'CUSTOM');
  await page.fill('#pub-data', '{"entity_id":"note-1","payload":{"text":"hello from the page"}}');
  await page.click('#publish');
  await pageWait(page, `document.getElementById('pub-result').textContent.includes('seq 6')`, 'publish ack');
  await pageWait(page, 'window.demo.events.length === 6', 'own event');
  assert.deepEqual(await seqsOf(page, 'gift-list:family-123'), range(1, 6));
  // presence (the test policy makes every topic a presence topic)
  const other = await openDemo(srv, 'topics=gift-list:family-123&token=bob');
  await pageWait(other, `document.body.dataset.state === 'open'`, 'second page');
  await pageWait(page, `(window.demo.presence?.users || []).includes('bob')`, 'presence shows bob');
  assert.match(await page.textContent('#presence'), /alice/);
  await other.close();
  // The screenshot in docs/ is refreshed on request (MW_UPDATE_DEMO_PNG=1);
  // a normal run writes it to the temp directory and leaves the tree clean.
  const shotDir = process.env.MW_UPDATE_DEMO_PNG === '1' ? join(repoRoot, 'docs') : tmpdir();
  mkdirSync(shotDir, { recursive: true });
  const shot = await page.screenshot({ path: join(shotDir, 'demo.png'), fullPage: true });
  assert.ok(shot.length > 1000, 'a screenshot was taken');
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('demo page: connection cut while events keep coming -> every event once, in order', { skip }, async () => {
  const srv = await server({ policy: usersPolicy() });
  const page = await openDemo(srv, 'topics=orders&token=carol&backoffMax=1000');
  await pageWait(page, `document.body.dataset.state === 'open' && window.demo.client.positions().orders != null`, 'subscribed');
  const N = 60;
  let cuts = 0;
  for (let i = 1; i <= N; i++) {
    await srv.publish('orders', 'ADDED', { entity_id: `o${i}` });
    if (i === 15 || i === 40) {
      // the k-th cut hits the k-th connection: wait until the page opened it
      const k = cuts + 1;
      await pageWait(page, `window.demo.states.filter(s => s.state === 'open').length >= ${k} && document.body.dataset.state === 'open'`, `connection ${k}`);
      await waitFor(async () => (await srv.disconnect('carol')).disconnected > 0, { what: 'a connection to cut' });
      cuts++;
    }
  }
  assert.equal(cuts, 2);
  await pageWait(page, `window.demo.events.length >= ${N}`, `${N} events`, 20000);
  assert.deepEqual(await seqsOf(page, 'orders'), range(1, N));
  const rows = await page.$$eval('#events tr[data-topic="orders"]', (trs) => trs.map((tr) => Number(tr.dataset.seq)));
  assert.deepEqual(rows.reverse(), range(1, N));
  assert.ok(await demo(page, `window.demo.states.filter(s => s.state === 'reconnecting').length >= 2`));
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('demo page: full server restart on the same port -> recovered:false and a refetch', { skip }, async () => {
  const policy = usersPolicy();
  const first = await server({ policy });
  const port = first.port;
  const page = await openDemo(first, 'topics=room:1&token=dave&backoffMax=1000');
  await pageWait(page, `window.demo.client.positions()['room:1'] != null`, 'subscribed');
  for (let i = 0; i < 3; i++) await first.publish('room:1');
  await pageWait(page, 'window.demo.events.length === 3', '3 events');
  await first.stop();
  await pageWait(page, `document.body.dataset.state === 'reconnecting'`, 'reconnecting');
  const second = await server({ policy, port });
  await second.publish('room:1', 'ADDED', { entity_id: 'after-restart' }); // history of the new epoch
  await pageWait(page, `window.demo.recoveries.some(r => r.topic === 'room:1' && r.recovered === false)`, 'recovered:false', 20000);
  await pageWait(page, `window.demo.refetches.some(r => r.topic === 'room:1' && r.ok)`, 'refetch');
  const refetch = await demo(page, `window.demo.refetches.find(r => r.topic === 'room:1')`);
  assert.equal(refetch.count, 1);
  assert.match(await page.textContent('#notices'), /recovered:false/);
  await second.publish('room:1');
  await pageWait(page, 'window.demo.events.length === 4', 'live event of the new epoch');
  assert.deepEqual(await seqsOf(page, 'room:1'), [1, 2, 3, 2]);
  await page.close();
});

for (const [deny, expect] of [[['websocket'], 'sse'], [['websocket', 'sse'], 'longpoll']]) {
  test(`demo page: ${deny.join(' and ')} refused by the policy -> ${expect}, still receiving`, { skip }, async () => {
    const srv = await server({ policy: usersPolicy(deny) });
    const page = await openDemo(srv, `topics=news&token=erin-${expect}&openTimeout=3000`);
    await pageWait(page, `document.body.dataset.state === 'open' && document.body.dataset.transport === '${expect}'`, `open on ${expect}`, 30000);
    assert.equal(await page.textContent('#transport'), expect);
    for (let i = 0; i < 3; i++) await srv.publish('news', 'ADDED', { entity_id: `n${i}` });
    await pageWait(page, 'window.demo.events.length === 3', `events over ${expect}`);
    assert.deepEqual(await seqsOf(page, 'news'), [1, 2, 3]);
    // and a cut on this transport loses nothing either
    await pageWait(page, `document.body.dataset.state === 'open'`, 'open');
    await waitFor(async () => (await srv.disconnect(`erin-${expect}`)).disconnected > 0, { what: 'a connection to cut' });
    for (let i = 3; i < 6; i++) await srv.publish('news', 'ADDED', { entity_id: `n${i}` });
    await pageWait(page, 'window.demo.events.length === 6', 'events after the cut');
    assert.deepEqual(await seqsOf(page, 'news'), range(1, 6));
    assert.ok(await demo(page, `window.demo.notices.some(n => n.startsWith('fallback'))`));
    await page.close();
  });
}
