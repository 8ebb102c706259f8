// Type declarations for moonwire.js (the moonwire JavaScript client).

export declare const VERSION: string;
export type TransportName = 'websocket' | 'sse' | 'longpoll';
export declare const TRANSPORTS: TransportName[];

export type ConnectionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'fallback' | 'closed';

/** The event envelope every transport carries (SPEC §3). */
export interface MoonwireEvent<D = Record<string, unknown>> {
  type: 'event';
  topic: string;
  event: 'ADDED' | 'UPDATED' | 'DELETED' | 'STATUS_CHANGED' | string;
  seq: number;
  id: string;
  data: D & {
    entity_id?: string;
    payload?: unknown;
    user_id?: string;
    tenant_id?: string;
    timestamp?: string;
  };
  trace_id?: string;
}

export interface Position {
  seq: number;
  epoch: string;
}

export interface RecoveryInfo {
  topic: string;
  /** false: events were lost (history gone, or a new epoch): refetch state. */
  recovered: boolean;
  seq?: number;
  epoch?: string;
}

export interface TopicError {
  topic?: string;
  topics?: string[];
  code: number | string;
  reason: string;
}

export interface PresenceMessage {
  type: 'presence';
  topic: string;
  event: 'join' | 'leave';
  data: { client_id: string; user_id: string; tenant_id?: string };
}

export interface PresenceInfo {
  topic: string;
  clients: number;
  users: string[];
  connections: { client_id: string; user_id: string }[];
}

export interface SubscriptionHandlers<D = Record<string, unknown>> {
  /** Each event of the topic once, in seq order. */
  onEvent?(event: MoonwireEvent<D>): void;
  /** After a resubscription: recovered:false means refetch state over REST. */
  onRecovery?(info: RecoveryInfo): void;
  /** Subscribed (again) on the transport in use; seq/epoch: the position. */
  onSubscribed?(info: { topic: string; seq?: number; epoch?: string }): void;
  /** The subscription was refused (policy, limits). */
  onError?(error: TopicError): void;
}

export interface Subscription {
  readonly topic: string;
  unsubscribe(): void;
}

export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(t: unknown): void;
  setInterval(fn: () => void, ms: number): unknown;
  clearInterval(t: unknown): void;
  now(): number;
}

export interface MoonwireOptions {
  /** Sent as ?token= on every transport; a function is called per connection. */
  token?: string | (() => string);
  /** Transport order (default websocket, sse, longpoll). */
  transports?: TransportName[];
  /** WebSocket constructor (Node 20: the `ws` package; detected when installed). */
  WebSocket?: unknown;
  /** EventSource constructor (Node: the `eventsource` package; detected when installed). */
  EventSource?: unknown;
  fetch?: typeof fetch;
  /** Backoff: full jitter, uniform in [0, min(backoffMax, backoffBase * 2^attempt)). */
  backoffBase?: number;
  backoffMax?: number;
  /** ms: a transport that has not opened by then failed. */
  openTimeout?: number;
  /** Failures before open (with the server reachable) before the next transport. */
  fallbackAfter?: number;
  /** ms between attempts to go back to WebSocket while on SSE or long-poll (0: never). */
  upgradeInterval?: number;
  pingInterval?: number;
  pongTimeout?: number;
  requestTimeout?: number;
  /** ms to hold events after a seq gap, waiting for the missing one (0: never hold). */
  reorderTimeout?: number;
  reorderMax?: number;
  /** Long-poll wait in seconds (server max 120). */
  pollTimeout?: number;
  /** false: do not fetch positions of new topics before an SSE/long-poll stream. */
  positionProbe?: boolean;
  /** false: call connect() yourself. */
  autoConnect?: boolean;
  /** Overrides the reachability check used for fallback decisions. */
  reachable?: () => Promise<boolean> | boolean;
  timers?: Timers;
  random?: () => number;
  transportFactories?: Partial<Record<TransportName, (ctx: unknown) => unknown>>;
}

export interface MoonwireEventMap {
  state: { state: ConnectionState; transport: TransportName | null };
  open: { transport: TransportName };
  disconnect: { transport: TransportName; code: number; reason: string };
  close: Record<string, never>;
  fallback: { from: TransportName; to: TransportName; reason: string };
  upgrade: { from: TransportName; to: TransportName };
  event: MoonwireEvent;
  recovery: RecoveryInfo;
  presence: PresenceMessage;
  error: TopicError;
}

export declare class MoonwireError extends Error {
  code: number | string;
  data?: unknown;
  constructor(message: string, code: number | string, data?: unknown);
}

export declare class Moonwire {
  constructor(url?: string, options?: MoonwireOptions);
  readonly baseUrl: string;
  readonly state: ConnectionState;
  readonly transport: TransportName | null;
  connect(): this;
  close(): void;
  subscribe<D = Record<string, unknown>>(
    topic: string,
    handlers?: SubscriptionHandlers<D> | ((event: MoonwireEvent<D>) => void),
    options?: { since?: Position },
  ): Subscription;
  positions(): Record<string, Position | null>;
  publish(topic: string, event: string, data?: Record<string, unknown>): Promise<{ status: string; seq: number }>;
  presence(topic: string): Promise<PresenceInfo>;
  on<K extends keyof MoonwireEventMap>(type: K, fn: (payload: MoonwireEventMap[K]) => void): () => void;
  once<K extends keyof MoonwireEventMap>(type: K, fn: (payload: MoonwireEventMap[K]) => void): () => void;
  off<K extends keyof MoonwireEventMap>(type: K, fn: (payload: MoonwireEventMap[K]) => void): void;
}

export declare class TopicState {
  constructor(topic: string, options?: { reorderTimeout?: number; reorderMax?: number; timers?: Timers });
  topic: string;
  lastSeq: number | null;
  epoch: string | null;
  stats: { delivered: number; duplicates: number; skipped: number };
  position(): Position | null;
  push(event: MoonwireEvent, deliver: (event: MoonwireEvent) => void): void;
  flush(deliver: (event: MoonwireEvent) => void): void;
  advance(seq: number | undefined, epoch?: string): void;
  reset(seq?: number, epoch?: string): void;
  dispose(): void;
}

export declare function backoffDelay(attempt: number, options?: { base?: number; max?: number }, random?: () => number): number;
export declare function nextTransport(input: {
  current: TransportName;
  order?: TransportName[];
  failures: number;
  reachable: boolean;
  fallbackAfter?: number;
  opened?: boolean;
}): { transport: TransportName; fallback: boolean };
export declare function encodeCursor(positions: Record<string, Position>): string;
export declare function decodeCursor(cursor: string): Record<string, Position> | null;

export default Moonwire;
