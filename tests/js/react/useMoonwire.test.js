// The React hook with real React 18 + React Query v5 (react-test-renderer, no
// DOM, no browser build) and a fake moonwire client.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { register } from 'node:module';

register('../lib/resolve-from-tests.js', import.meta.url);
globalThis.IS_REACT_ACT_ENVIRONMENT = true;
const React = (await import('react')).default;
const { act, create } = (await import('react-test-renderer')).default;
const { QueryClient, QueryClientProvider, useQuery, useMutation, useQueryClient } = await import('@tanstack/react-query');
const { useMoonwire, MoonwireProvider, optimistic, topicQueryKey } = await import('../../../examples/react/useMoonwire.js');

const h = React.createElement;

/** Enough of the Moonwire API for the hook: subscribe/on/state/transport. */
class FakeClient {
  constructor() { this.subs = new Map(); this.listeners = new Set(); this.state = 'connecting'; this.transport = 'websocket'; this.log = []; }
  subscribe(topic, handlers) {
    this.log.push(`+${topic}`);
    const set = this.subs.get(topic) || new Set();
    set.add(handlers);
    this.subs.set(topic, set);
    return { topic, unsubscribe: () => { this.log.push(`-${topic}`); set.delete(handlers); } };
  }
  on(type, fn) { if (type !== 'state') return () => {}; this.listeners.add(fn); return () => this.listeners.delete(fn); }
  setState(state, transport = this.transport) { this.state = state; this.transport = transport; for (const fn of this.listeners) fn({ state, transport }); }
  emit(topic, ev) { for (const hd of this.subs.get(topic) || []) hd.onEvent && hd.onEvent({ type: 'event', topic, ...ev }); }
  recover(topic, recovered) { for (const hd of this.subs.get(topic) || []) hd.onRecovery && hd.onRecovery({ topic, recovered }); }
}

async function waitUntil(cond, what, timeout = 3000) {
  const end = Date.now() + timeout;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out: ${what}`);
    await act(async () => { await new Promise((r) => setTimeout(r, 5)); });
  }
}

function setup(Component, props) {
  const queryClient = new QueryClient({ defaultOptions: { queries: { retry: false, gcTime: Infinity } } });
  const client = new FakeClient();
  let root;
  const render = (p) => h(QueryClientProvider, { client: queryClient }, h(MoonwireProvider, { client }, h(Component, p)));
  act(() => { root = create(render(props)); });
  return { queryClient, client, root, rerender: (p) => act(() => root.update(render(p))), unmount: () => act(() => root.unmount()) };
}

test('topicQueryKey splits at the first colon', () => {
  assert.deepEqual(topicQueryKey('gift-list:family-123'), ['gift-list', 'family-123']);
  assert.deepEqual(topicQueryKey('a:b:c'), ['a', 'b:c']);
  assert.deepEqual(topicQueryKey('plain'), ['plain']);
});

test('initial data over REST; an event invalidates the query, which refetches', async () => {
  let fetches = 0;
  const seen = {};
  function GiftList({ listId }) {
    const q = useQuery({ queryKey: ['gift-list', listId], queryFn: async () => ({ n: ++fetches }) });
    const live = useMoonwire([`gift-list:${listId}`]);
    Object.assign(seen, { data: q.data, live });
    return null;
  }
  const t = setup(GiftList, { listId: '123' });
  await waitUntil(() => seen.data && seen.data.n === 1, 'initial fetch');
  assert.deepEqual(t.client.log, ['+gift-list:123']);
  assert.equal(seen.live.state, 'connecting');
  act(() => t.client.setState('open', 'sse'));
  assert.equal(seen.live.state, 'open');
  assert.equal(seen.live.transport, 'sse');
  act(() => t.client.emit('gift-list:123', { event: 'UPDATED', seq: 1, data: { entity_id: 'gift-7' } }));
  await waitUntil(() => seen.data.n === 2, 'refetch after the event');
  assert.equal(seen.live.lastEvent.seq, 1);
  // an event of another list does not touch this one
  t.queryClient.setQueryData(['gift-list', 'other'], { n: 0 });
  act(() => t.client.emit('gift-list:123', { event: 'ADDED', seq: 2 }));
  await waitUntil(() => seen.data.n === 3, 'second refetch');
  // recovered:false refetches; recovered:true does not
  act(() => t.client.recover('gift-list:123', true));
  act(() => t.client.recover('gift-list:123', false));
  await waitUntil(() => seen.data.n === 4 && seen.live.unrecovered === 1, 'refetch after recovered:false');
  // a topic change resubscribes; unmount unsubscribes
  t.rerender({ listId: '456' });
  await waitUntil(() => seen.data && seen.data.n === 5, 'fetch of the new list');
  assert.deepEqual(t.client.log, ['+gift-list:123', '-gift-list:123', '+gift-list:456']);
  t.unmount();
  assert.deepEqual(t.client.log.at(-1), '-gift-list:456');
});

test('queryKeys and onEvent options: custom keys, or a cache update without refetch', async () => {
  let fetches = 0;
  const seen = {};
  function Board() {
    const q = useQuery({ queryKey: ['tasks'], queryFn: async () => ({ n: ++fetches, items: [] }) });
    useMoonwire(['board:1'], {
      queryKeys: () => ['tasks'],
      onEvent: (ev, qc) => {
        if (ev.event !== 'ADDED') return undefined;
        qc.setQueryData(['tasks'], (old) => ({ ...old, items: [...old.items, ev.data.entity_id] }));
        return false; // the payload was enough: no refetch
      },
    });
    seen.data = q.data;
    return null;
  }
  const t = setup(Board, {});
  await waitUntil(() => seen.data, 'initial');
  act(() => t.client.emit('board:1', { event: 'ADDED', seq: 1, data: { entity_id: 't1' } }));
  assert.deepEqual(seen.data.items, ['t1']);
  assert.equal(fetches, 1);
  act(() => t.client.emit('board:1', { event: 'DELETED', seq: 2, data: { entity_id: 't1' } }));
  await waitUntil(() => fetches === 2, 'refetch for a DELETED');
  t.unmount();
});

test('optimistic update: shown at once, rolled back on error, kept on success', async () => {
  let server = { gifts: [{ id: 'g1', name: 'Bike' }] };
  let fail = false;
  let release;
  const seen = {};
  function Rename() {
    const qc = useQueryClient();
    const key = ['gift-list', '1'];
    const q = useQuery({ queryKey: key, queryFn: async () => structuredClone(server) });
    const m = useMutation(optimistic(qc, key, async ({ name }) => {
      await new Promise((r) => { release = r; });
      if (fail) throw new Error('backend said no');
      server = { gifts: [{ id: 'g1', name }] };
      return server;
    }, (old, { name }) => ({ gifts: old.gifts.map((g) => ({ ...g, name })) })));
    Object.assign(seen, { data: q.data, m });
    return null;
  }
  const t = setup(Rename, {});
  await waitUntil(() => seen.data, 'initial');
  fail = true;
  act(() => seen.m.mutate({ name: 'Kite' }));
  await waitUntil(() => seen.data.gifts[0].name === 'Kite', 'optimistic value');
  await act(async () => { release(); });
  await waitUntil(() => seen.m.isError && seen.data.gifts[0].name === 'Bike', 'rolled back');
  fail = false;
  act(() => seen.m.mutate({ name: 'Red bike' }));
  await waitUntil(() => seen.data.gifts[0].name === 'Red bike', 'optimistic value 2');
  await act(async () => { release(); });
  await waitUntil(() => seen.m.isSuccess, 'success');
  await waitUntil(() => seen.data.gifts[0].name === 'Red bike', 'kept (and refetched)');
  t.unmount();
});
