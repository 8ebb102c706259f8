// Helpers of the two-node (one Redis) tests, shared by integration/ and
// browser/: a redis-server on a free loopback port, two moonwire nodes on it,
// and a TCP proxy standing in for a load balancer. Not a test file (the name
// matches none of node --test's patterns).
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import { Server, waitFor } from '../lib/server.js';

export const REDIS_SERVER = process.env.MW_REDIS_SERVER || '/usr/bin/redis-server';

// Whatever is still running when the test process exits (a failed before(),
// an unhandled error) is killed by PID.
const live = new Set();
process.on('exit', () => {
  for (const p of live) {
    try { process.kill(p, 'SIGKILL'); } catch { /* already gone */ }
  }
});
function track(proc) {
  live.add(proc.pid);
  proc.once('exit', () => live.delete(proc.pid));
}

/** A free loopback port (bound and released). */
export function freePort() {
  return new Promise((res, rej) => {
    const s = net.createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

function redisPing(port) {
  return new Promise((res) => {
    const s = net.connect({ host: '127.0.0.1', port });
    let buf = '';
    const done = (v) => { clearTimeout(t); s.destroy(); res(v); };
    const t = setTimeout(() => done(false), 500);
    s.on('connect', () => s.write('PING\r\n'));
    s.on('data', (d) => { buf += d; if (buf.includes('\r\n')) done(buf.startsWith('+PONG')); });
    s.on('error', () => done(false));
  });
}

/** redis-server on 127.0.0.1:<free port>, no persistence; stop() by PID. */
export class Redis {
  async start() {
    this.dir = mkdtempSync(join(tmpdir(), 'mw-js-redis-'));
    this.log = '';
    for (let attempt = 0; ; attempt++) {
      this.port = await freePort();
      this.proc = spawn(REDIS_SERVER, ['--port', String(this.port), '--bind', '127.0.0.1',
        '--save', '', '--appendonly', 'no', '--dir', this.dir], { stdio: ['ignore', 'pipe', 'pipe'] });
      track(this.proc);
      this.proc.stdout.on('data', (d) => { this.log += d; });
      this.proc.stderr.on('data', (d) => { this.log += d; });
      this.exited = new Promise((r) => this.proc.once('exit', (code, sig) => r({ code, sig })));
      try {
        await waitFor(async () => {
          if (this.proc.exitCode !== null) throw new Error(`redis-server exited (${this.proc.exitCode}):\n${this.log}`);
          return redisPing(this.port);
        }, { timeout: 10000, interval: 20, what: `redis-server on port ${this.port}` });
        break;
      } catch (e) {
        await this.stop();
        if (attempt >= 2) throw e; // the free port was taken meanwhile: try another
      }
    }
    this.url = `redis://127.0.0.1:${this.port}`;
    return this;
  }

  async stop() {
    const p = this.proc;
    if (p && p.exitCode === null && p.signalCode === null) {
      process.kill(p.pid, 'SIGTERM');
      const timer = setTimeout(() => { try { process.kill(p.pid, 'SIGKILL'); } catch { /* gone */ } }, 10000);
      await this.exited;
      clearTimeout(timer);
    }
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A moonwire node with --storage redis; kill(sig) by PID (SIGKILL: a crash). */
export async function redisNode(redis, { policy = null } = {}) {
  const s = new Server({ policy, args: ['--storage', 'redis', '--redis', redis.url, '--drain-timeout', '3'] });
  await s.start();
  track(s.proc);
  s.kill = async (sig = 'SIGTERM') => {
    if (sig === 'SIGTERM') return s.stop();
    if (s.proc.exitCode === null && s.proc.signalCode === null) process.kill(s.proc.pid, sig);
    await s.exited;
  };
  return s;
}

/**
 * A TCP proxy on 127.0.0.1 (a load balancer): every new client connection is
 * forwarded to the current backend port; switchTo(port) changes it for new
 * connections. A connection whose backend cannot be reached is closed (as a
 * load balancer with a dead backend in its pool would). conns: every
 * connection with its backend port and whether it is still open.
 */
export class Proxy {
  constructor(backendPort) {
    this.backend = backendPort;
    this.conns = [];
    this.sockets = new Set();
    this.held = null;
  }

  start() {
    this.server = net.createServer((client) => {
      client.on('error', () => client.destroy());
      if (this.held) this.held.push(client);
      else this._forward(client);
    });
    return new Promise((res, rej) => {
      this.server.once('error', rej);
      this.server.listen(0, '127.0.0.1', () => {
        this.port = this.server.address().port;
        this.url = `http://127.0.0.1:${this.port}`;
        res(this);
      });
    });
  }

  _forward(client) {
    const rec = { backend: this.backend, open: true, connected: false };
    this.conns.push(rec);
    const up = net.connect({ host: '127.0.0.1', port: rec.backend });
    this.sockets.add(client);
    this.sockets.add(up);
    const close = () => {
      rec.open = false;
      client.destroy();
      up.destroy();
      this.sockets.delete(client);
      this.sockets.delete(up);
    };
    up.on('connect', () => { rec.connected = true; });
    client.pipe(up);
    up.pipe(client);
    client.on('error', close);
    up.on('error', close);
    client.on('close', close);
    up.on('close', close);
  }

  switchTo(port) { this.backend = port; }

  /** New connections wait (accepted, not forwarded) until release(). */
  hold() { if (!this.held) this.held = []; }

  /** Forwards the waiting connections (still open ones) to the current backend. */
  release() {
    const q = this.held || [];
    this.held = null;
    for (const client of q) if (!client.destroyed) this._forward(client);
  }

  /** Open, established connections to the given backend. */
  openTo(port) { return this.conns.filter((c) => c.open && c.connected && c.backend === port).length; }

  async stop() {
    if (!this.server) return;
    for (const s of this.held || []) s.destroy();
    for (const s of this.sockets) s.destroy();
    await new Promise((r) => this.server.close(() => r()));
  }
}

export const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);
