// React binding of the moonwire client for React Query (TanStack Query v5).
// Plain JavaScript (no JSX): usable as is, also from Node tests.
//
//   <MoonwireProvider client={new Moonwire(url, { token })}>
//     ...
//   const { state, transport } = useMoonwire([`gift-list:${listId}`]);
//
// Every event of a topic invalidates the React Query caches it maps to
// (default: 'gift-list:123' -> ['gift-list', '123']); recovered:false
// (events lost across a reconnect) invalidates them all, so the data is
// refetched over REST.
import { createContext, createElement, useContext, useEffect, useRef, useState } from 'react';
import { useQueryClient } from '@tanstack/react-query';

const MoonwireContext = createContext(null);

export function MoonwireProvider({ client, children }) {
  return createElement(MoonwireContext.Provider, { value: client }, children);
}

export function useMoonwireClient() {
  return useContext(MoonwireContext);
}

/** 'gift-list:family-123' -> ['gift-list', 'family-123'] */
export function topicQueryKey(topic) {
  const i = topic.indexOf(':');
  return i < 0 ? [topic] : [topic.slice(0, i), topic.slice(i + 1)];
}

/**
 * Subscribes to `topics` while mounted. Options:
 *   client      a Moonwire client (default: the provider's)
 *   queryKeys   (event) => queryKey | queryKey[] | null: what to invalidate
 *               (default [topicQueryKey(event.topic)]); null/[]: nothing
 *   onEvent     (event, queryClient) => void | false: runs first; false skips
 *               the invalidation (e.g. after setQueryData from the payload)
 *   onRecovery  ({topic, recovered}) => void
 *   enabled     false: no subscription
 * Returns { state, transport, lastEvent, unrecovered }.
 */
export function useMoonwire(topics, options = {}) {
  const fromContext = useContext(MoonwireContext);
  const client = options.client || fromContext;
  const queryClient = useQueryClient();
  const [conn, setConn] = useState(() => ({ state: client ? client.state : 'idle', transport: client ? client.transport : null }));
  const [lastEvent, setLastEvent] = useState(null);
  const [unrecovered, setUnrecovered] = useState(0);
  const opts = useRef(options);
  opts.current = options;
  const list = Array.isArray(topics) ? topics : [topics];
  const key = list.filter(Boolean).join('\n');
  const enabled = options.enabled !== false;

  useEffect(() => {
    if (!client) return undefined;
    setConn({ state: client.state, transport: client.transport });
    return client.on('state', (s) => setConn({ state: s.state, transport: s.transport }));
  }, [client]);

  useEffect(() => {
    if (!client || !enabled || !key) return undefined;
    const keysFor = (ev) => {
      const o = opts.current;
      const k = o.queryKeys ? o.queryKeys(ev) : [topicQueryKey(ev.topic)];
      if (!k || k.length === 0) return [];
      return Array.isArray(k[0]) ? k : [k];
    };
    const subs = key.split('\n').map((topic) => client.subscribe(topic, {
      onEvent: (ev) => {
        setLastEvent(ev);
        const o = opts.current;
        if (o.onEvent && o.onEvent(ev, queryClient) === false) return;
        for (const k of keysFor(ev)) queryClient.invalidateQueries({ queryKey: k });
      },
      onRecovery: (r) => {
        const o = opts.current;
        if (o.onRecovery) o.onRecovery(r);
        if (r.recovered) return;
        setUnrecovered((n) => n + 1);
        // events were lost: refetch everything this topic feeds
        for (const k of keysFor({ topic: r.topic, type: 'recovery' })) queryClient.invalidateQueries({ queryKey: k });
      },
    }));
    return () => { for (const s of subs) s.unsubscribe(); };
  }, [client, queryClient, key, enabled]);

  return { state: conn.state, transport: conn.transport, lastEvent, unrecovered };
}

/**
 * Mutation options for an optimistic update with rollback:
 *   useMutation(optimistic(queryClient, queryKey, mutationFn, (old, vars) => next))
 * The cache shows `next` at once; an error restores the previous data; in
 * every case the query is invalidated afterwards (the server's event would
 * do it too; this covers a publish that fails).
 */
export function optimistic(queryClient, queryKey, mutationFn, apply) {
  return {
    mutationFn,
    onMutate: async (vars) => {
      await queryClient.cancelQueries({ queryKey });
      const previous = queryClient.getQueryData(queryKey);
      queryClient.setQueryData(queryKey, (old) => apply(old, vars));
      return { previous };
    },
    onError: (_err, _vars, context) => {
      if (context) queryClient.setQueryData(queryKey, context.previous);
    },
    onSettled: () => queryClient.invalidateQueries({ queryKey }),
  };
}
