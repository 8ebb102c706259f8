/* hiredis <-> libuv glue for the Redis storage.
 *
 * A copy of hiredis' adapters/libuv.h with two fixes that the 0.14 header
 * Debian ships lacks: a poll error (libuv reports a refused connect as
 * status UV_EBADF) is handed to hiredis as readable/writable so hiredis sees
 * the socket error and calls the connect callback (the stock adapter drops
 * it and the connection hangs forever), and a failed uv_poll_init does not
 * leak. Header-only, static functions, like the original. */
#ifndef MW_REDIS_UV_H
#define MW_REDIS_UV_H

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdlib.h>
#include <uv.h>

typedef struct rd_uv_events {
  redisAsyncContext *context;
  uv_poll_t handle;
  int events;
} rd_uv_events_t;

static void rd_uv_poll(uv_poll_t *handle, int status, int events) {
  rd_uv_events_t *p = handle->data;
  int ev = status ? p->events : events;
  if (p->context != NULL && (ev & UV_READABLE))
    redisAsyncHandleRead(p->context);
  if (p->context != NULL && (ev & UV_WRITABLE))
    redisAsyncHandleWrite(p->context);
}

static void rd_uv_update(rd_uv_events_t *p) {
  if (p->events)
    uv_poll_start(&p->handle, p->events, rd_uv_poll);
  else
    uv_poll_stop(&p->handle);
}

static void rd_uv_add_read(void *privdata) {
  rd_uv_events_t *p = privdata;
  p->events |= UV_READABLE;
  rd_uv_update(p);
}

static void rd_uv_del_read(void *privdata) {
  rd_uv_events_t *p = privdata;
  p->events &= ~UV_READABLE;
  rd_uv_update(p);
}

static void rd_uv_add_write(void *privdata) {
  rd_uv_events_t *p = privdata;
  p->events |= UV_WRITABLE;
  rd_uv_update(p);
}

static void rd_uv_del_write(void *privdata) {
  rd_uv_events_t *p = privdata;
  p->events &= ~UV_WRITABLE;
  rd_uv_update(p);
}

static void rd_uv_on_close(uv_handle_t *handle) {
  free(handle->data);
}

static void rd_uv_cleanup(void *privdata) {
  rd_uv_events_t *p = privdata;
  p->context = NULL; /* the context is going away */
  uv_close((uv_handle_t *)&p->handle, rd_uv_on_close);
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
  ac->ev.addRead = rd_uv_add_read;
  ac->ev.delRead = rd_uv_del_read;
  ac->ev.addWrite = rd_uv_add_write;
  ac->ev.delWrite = rd_uv_del_write;
  ac->ev.cleanup = rd_uv_cleanup;
  ac->ev.data = p;
  p->handle.data = p;
  p->context = ac;
  return REDIS_OK;
}

#endif
