// The example app: a gift list kept in sync by moonwire and React Query.
//   initial data over REST (useQuery), live invalidation (useMoonwire),
//   an optimistic rename with rollback (useMutation + optimistic()).
// Build it with any React toolchain (Vite: `npm create vite`, copy this
// directory in, `npm i react react-dom @tanstack/react-query`); the client
// module is ../client/moonwire.js (or the server's own /moonwire.js).
import React, { useMemo, useState } from 'react';
import { createRoot } from 'react-dom/client';
import { QueryClient, QueryClientProvider, useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { Moonwire } from '../client/moonwire.js';
import { MoonwireProvider, useMoonwire, optimistic } from './useMoonwire.js';
import { fetchGiftList, renameGift } from './api.js';

function GiftList({ listId }) {
  const queryKey = ['gift-list', listId];
  const queryClient = useQueryClient();
  const { data, isLoading, error } = useQuery({ queryKey, queryFn: () => fetchGiftList(listId) });
  const { state, transport, lastEvent } = useMoonwire([`gift-list:${listId}`], {
    onRecovery: (r) => { if (!r.recovered) console.info('missed events: refetching', r.topic); },
  });
  const rename = useMutation(optimistic(queryClient, queryKey, renameGift,
    (old, { id, name }) => ({ ...old, gifts: old.gifts.map((g) => (g.id === id ? { ...g, name } : g)) })));
  const [draft, setDraft] = useState({});

  if (isLoading) return <p>loading…</p>;
  if (error) return <p>failed: {String(error)}</p>;
  return (
    <section>
      <p className="conn">{state} over {transport || '–'}{lastEvent ? ` · last: ${lastEvent.event} #${lastEvent.seq}` : ''}</p>
      <ul>
        {data.gifts.map((g) => (
          <li key={g.id}>
            <input value={draft[g.id] ?? g.name} onChange={(e) => setDraft({ ...draft, [g.id]: e.target.value })} />
            <button onClick={() => rename.mutate({ listId, id: g.id, name: draft[g.id] ?? g.name })}>rename</button>
          </li>
        ))}
      </ul>
      {rename.isError && <p className="error">rename failed, rolled back</p>}
    </section>
  );
}

export function App({ url = location.origin, token, listId = 'family-123' }) {
  const queryClient = useMemo(() => new QueryClient(), []);
  const client = useMemo(() => new Moonwire(url, { token }), [url, token]);
  return (
    <QueryClientProvider client={queryClient}>
      <MoonwireProvider client={client}>
        <GiftList listId={listId} />
      </MoonwireProvider>
    </QueryClientProvider>
  );
}

if (typeof document !== 'undefined' && document.getElementById('root')) {
  createRoot(document.getElementById('root')).render(<App />);
}
