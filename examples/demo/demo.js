// The demo page: subscribe, watch live events (with seq), publish over the
// WebSocket, connection state, transport and presence. State for tests and
// curious people: window.demo.
import { Moonwire } from '/moonwire.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const options = {};
if (params.get('token')) options.token = params.get('token');
if (params.get('transports')) options.transports = params.get('transports').split(',');
for (const k of ['openTimeout', 'upgradeInterval', 'backoffMax', 'backoffBase', 'pingInterval']) {
  if (params.get(k)) options[k] = Number(params.get(k));
}

const mw = new Moonwire(location.origin, options);
const subs = new Map(); // topic -> subscription
const demo = { client: mw, events: [], recoveries: [], refetches: [], states: [], notices: [] };
window.demo = demo;
let presenceTopic = null;

function notice(text, cls = '') {
  demo.notices.push(text);
  const li = document.createElement('li');
  li.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  if (cls) li.className = cls;
  $('notices').prepend(li);
  while ($('notices').children.length > 50) $('notices').lastChild.remove();
}

mw.on('state', ({ state, transport }) => {
  demo.states.push({ state, transport });
  $('state').textContent = state;
  $('state').className = `badge state-${state}`;
  $('transport').textContent = transport || '–';
  document.body.dataset.state = state;
  document.body.dataset.transport = transport || '';
  renderTopics();
});
mw.on('fallback', (f) => notice(`fallback ${f.from} → ${f.to} (${f.reason})`));
mw.on('upgrade', (u) => notice(`upgraded ${u.from} → ${u.to}`, 'info'));
mw.on('disconnect', (d) => notice(`disconnected (${d.transport}: ${d.reason || d.code})`, 'info'));
mw.on('presence', (p) => { if (p.topic === presenceTopic) refreshPresence(); });
mw.on('error', (e) => notice(`error ${e.code}: ${e.reason}${e.topic ? ` (${e.topic})` : ''}`));

function addEvent(ev) {
  demo.events.push({ topic: ev.topic, seq: ev.seq, event: ev.event, data: ev.data });
  $('count').textContent = String(demo.events.length);
  const tr = document.createElement('tr');
  tr.className = 'fresh';
  tr.dataset.topic = ev.topic;
  tr.dataset.seq = String(ev.seq);
  const cells = [ev.seq, ev.topic, ev.event, JSON.stringify(ev.data), ev.trace_id || '', new Date().toLocaleTimeString()];
  ['seq', 'topic', 'event', 'data', 'trace', 'time'].forEach((cls, i) => {
    const td = document.createElement('td');
    td.className = cls;
    td.textContent = String(cells[i]);
    tr.appendChild(td);
  });
  $('events').prepend(tr);
  while ($('events').children.length > 500) $('events').lastChild.remove();
  renderTopics();
}

// recovered:false: events were lost (history gone, server restarted): a real
// app refetches its state over REST. The demo reloads the topic's history.
async function refetch(topic) {
  const entry = { topic, ok: false, count: 0 };
  try {
    const res = await fetch(`/api/history?topic=${encodeURIComponent(topic)}&limit=100`);
    if (res.ok) {
      const body = await res.json();
      entry.ok = true;
      entry.count = body.events.length;
      entry.seq = body.seq;
      entry.epoch = body.epoch;
    } else entry.status = res.status;
  } catch (e) {
    entry.error = String(e);
  }
  demo.refetches.push(entry);
  notice(entry.ok ? `refetched ${topic}: ${entry.count} stored events, seq ${entry.seq}` : `refetch of ${topic} failed (${entry.status || entry.error})`);
}

function subscribe(topic) {
  if (!topic || subs.has(topic)) return;
  const sub = mw.subscribe(topic, {
    onEvent: addEvent,
    onRecovery: (r) => {
      demo.recoveries.push(r);
      if (!r.recovered) {
        notice(`${topic}: recovered:false (epoch ${r.epoch}) → refetching`);
        refetch(topic);
      } else notice(`${topic}: recovered every missed event`, 'info');
    },
    onSubscribed: () => { renderTopics(); if (topic === presenceTopic) refreshPresence(); },
    onError: (e) => notice(`${topic} refused: ${e.code} ${e.reason}`),
  });
  subs.set(topic, sub);
  presenceTopic = topic;
  if (!$('pub-topic').value) $('pub-topic').value = topic;
  renderTopics();
}

function renderTopics() {
  const ul = $('topics');
  ul.textContent = '';
  const pos = mw.positions();
  for (const topic of subs.keys()) {
    const li = document.createElement('li');
    li.dataset.topic = topic;
    const name = document.createElement('span');
    name.textContent = topic;
    name.style.cursor = 'pointer';
    name.onclick = () => { presenceTopic = topic; refreshPresence(); };
    const p = document.createElement('span');
    p.className = 'pos';
    p.textContent = pos[topic] ? `seq ${pos[topic].seq}` : 'seq –';
    const b = document.createElement('button');
    b.className = 'small';
    b.textContent = 'unsubscribe';
    b.onclick = () => { subs.get(topic).unsubscribe(); subs.delete(topic); if (presenceTopic === topic) presenceTopic = subs.keys().next().value || null; renderTopics(); refreshPresence(); };
    li.append(name, p, b);
    ul.appendChild(li);
  }
}

async function refreshPresence() {
  $('presence-topic').textContent = presenceTopic || '';
  const box = $('presence');
  if (!presenceTopic) { box.textContent = 'subscribe to a topic to see who is there'; return; }
  if (mw.transport !== 'websocket' || mw.state !== 'open') { box.textContent = `presence needs the WebSocket (now: ${mw.transport || '–'})`; return; }
  try {
    const p = await mw.presence(presenceTopic);
    box.textContent = `${p.clients} connection${p.clients === 1 ? '' : 's'}: `;
    for (const u of p.users) {
      const s = document.createElement('span');
      s.className = 'user';
      s.textContent = u;
      box.appendChild(s);
    }
    demo.presence = p;
  } catch (e) {
    box.textContent = `presence: ${e.message}`;
  }
}
setInterval(refreshPresence, 5000);

$('subscribe-form').addEventListener('submit', (e) => {
  e.preventDefault();
  subscribe($('topic').value.trim());
  $('topic').value = '';
});

$('publish-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const out = $('pub-result');
  let data;
  try { data = JSON.parse($('pub-data').value || '{}'); } catch { out.textContent = 'data is not valid JSON'; return; }
  out.textContent = 'publishing…';
  try {
    const ack = await mw.publish($('pub-topic').value.trim(), $('pub-event').value.trim(), data);
    out.textContent = `${ack.status}, seq ${ack.seq}`;
  } catch (err) {
    out.textContent = `failed: ${err.message}`;
  }
});

for (const t of (params.get('topics') || '').split(',').map((s) => s.trim()).filter(Boolean)) subscribe(t);
