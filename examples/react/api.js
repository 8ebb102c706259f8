// The app's own REST backend (not moonwire): it stores gift lists and, after
// each change, publishes an event with POST /api/publish (server side, with
// the API key), e.g. {"topic":"gift-list:family-123","event":"UPDATED",
// "data":{"entity_id":"gift-7","payload":{"name":"Bike"}}}.
export async function fetchGiftList(listId) {
  const res = await fetch(`/rest/gift-lists/${encodeURIComponent(listId)}`);
  if (!res.ok) throw new Error(`GET gift list: ${res.status}`);
  return res.json(); // {id, gifts: [{id, name}]}
}

export async function renameGift({ listId, id, name }) {
  const res = await fetch(`/rest/gift-lists/${encodeURIComponent(listId)}/gifts/${encodeURIComponent(id)}`, {
    method: 'PATCH',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ name }),
  });
  if (!res.ok) throw new Error(`PATCH gift: ${res.status}`);
  return res.json();
}
