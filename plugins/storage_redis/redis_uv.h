/* hiredis <-> libuv glue for the Redis storage.
 *
 * A copy of hiredis' adapters/libuv.h with two fixes that the 0.14 header
 * Debian ships lacks: a poll error (libuv reports a refused connect as
 * status UV_EBADF) is handed to hiredis as readable/writable so hiredis sees
 * the socket error and calls the connect callback (the stock adapter drops
 * it and the connection hangs forever), and a failed uv_poll_init does not
 * leak. Also: writes are flushed from a uv_check at the end of the loop turn
that queued them (every command of the turn in one write, no epoll
registration per command), and toggling writability per command does not
re-register the descriptor. Header-only, static functions, like the original. */
#ifndef MW_REDIS_UV_H
#define MW_REDIS_UV_H

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdlib.h>
#include <uv.h>

typedef struct rd_uv_events {
  redisAsyncContext *context;
  uv_poll_t handle;
  uv_check_t flush; /* writes what this loop turn queued, after its callbacks */
  int events;       /* what hiredis wants to hear about */
  int armed;        /* what the poll handle watches */
  int in_flush;     /* inside rd_uv_on_flush */
  int open;         /* handles not closed yet: freed at 0 */
} rd_uv_events_t;

static void rd_uv_poll(uv_poll_t *handle, int status, int events) {
  rd_uv_events_t *p = handle->data;
  int ev = status ? p->events : events;
  if (p->context != NULL && (ev & UV_READABLE))
    redisAsyncHandleRead(p->context);
  if (p->context != NULL && (ev & UV_WRITABLE))
    redisAsyncHandleWrite(p->context);
}

/* Makes the poll handle watch what hiredis wants; no system call when that
 * did not change (uv_poll_start re-registers the descriptor every time). */
static void rd_uv_sync(rd_uv_events_t *p) {
  if (p->armed == p->events) return;
  if (p->events)
    uv_poll_start(&p->handle, p->events, rd_uv_poll);
  else
    uv_poll_stop(&p->handle);
  p->armed = p->events;
}

/* The check phase, after every callback of this loop turn: everything the
 * turn queued goes out in one write (a pipeline), without a poll round trip
 * for writability and without arming and disarming it per command. What
 * the socket did not take is left to the poll (UV_WRITABLE). */
static void rd_uv_on_flush(uv_check_t *c) {
  rd_uv_events_t *p = c->data;
  uv_check_stop(c);
  if (p->context == NULL || !(p->events & UV_WRITABLE)) return;
  p->in_flush = 1;
  redisAsyncHandleWrite(p->context); /* may free the context */
  p->in_flush = 0;
  if (p->context != NULL) rd_uv_sync(p);
}

static void rd_uv_add_read(void *privdata) {
  rd_uv_events_t *p = privdata;
  p->events |= UV_READABLE;
  /* hiredis calls this after every read: re-registered every time, like the
   * stock adapter. Skipping that measured more CPU on a node receiving a
   * pub/sub flood (larger bursts per loop turn reach the core's queues). */
  p->armed = -1;
  rd_uv_sync(p);
}

static void rd_uv_del_read(void *privdata) {
  rd_uv_events_t *p = privdata;
  p->events &= ~UV_READABLE;
  rd_uv_sync(p);
}

static void rd_uv_add_write(void *privdata) {
  rd_uv_events_t *p = privdata;
  p->events |= UV_WRITABLE;
  if (p->armed & UV_WRITABLE) return; /* the poll writes it */
  /* Connected: write at the end of this loop turn. Connecting (hiredis
   * learns the connect's outcome from writability) or a write that the
   * socket did not take completely: wait for the poll. */
  if ((p->context->c.flags & REDIS_CONNECTED) && !p->in_flush)
    uv_check_start(&p->flush, rd_uv_on_flush);
  else if (!p->in_flush)
    rd_uv_sync(p);
}

static void rd_uv_del_write(void *privdata) {
  rd_uv_events_t *p = privdata;
  p->events &= ~UV_WRITABLE;
  if (!p->in_flush) rd_uv_sync(p);
}

static void rd_uv_on_close(uv_handle_t *handle) {
  rd_uv_events_t *p = handle->data;
  if (--p->open == 0) free(p);
}

static void rd_uv_cleanup(void *privdata) {
  rd_uv_events_t *p = privdata;
  p->context = NULL; /* the context is going away */
  uv_close((uv_handle_t *)&p->handle, rd_uv_on_close);
  uv_close((uv_handle_t *)&p->flush, rd_uv_on_close);
}

/* Attaches `ac` to `loop`. REDIS_OK or REDIS_ERR. */
static int rd_uv_attach(redisAsyncContext *ac, uv_loop_t *loop) {
  if (ac->ev.data != NULL) return REDIS_ERR;
  rd_uv_events_t *p = calloc(1, sizeof *p);
  if (!p) return REDIS_ERR;
  if (uv_poll_init(loop, &p->handle, ac->c.fd) != 0) {
    free(p);
    return REDIS_ERR;
  }
  uv_check_init(loop, &p->flush);
  p->open = 2;
  ac->ev.addRead = rd_uv_add_read;
  ac->ev.delRead = rd_uv_del_read;
  ac->ev.addWrite = rd_uv_add_write;
  ac->ev.delWrite = rd_uv_del_write;
  ac->ev.cleanup = rd_uv_cleanup;
  ac->ev.data = p;
  p->handle.data = p;
  p->flush.data = p;
  p->context = ac;
  return REDIS_OK;
}

#endif
