/* Unit tests of core/conn.c's outbound queue: an idle connection holds no
 * buffer, writes that the socket does not take at once wait in one uv_write
 * (its queue entries stay put while libuv holds them, also when the ring
 * grows meanwhile), bytes come out in order, and the byte accounting
 * (queued, worker->outbound_bytes) stays exact. Real socketpairs, a real
 * loop; every wait is bounded. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core_fixture.h"
#include "event.h"

static int setup(void **state) {
  core_fixture_t *f = calloc(1, sizeof *f);
  fixture_init(f, NULL);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  core_fixture_t *f = *state;
  fixture_done(f);
  free(f);
  return 0;
}

static mw_event_t *sealed(const char *topic, uint64_t seq) {
  mw_event_t *ev = mw__event_draft(topic, "UPDATED", "t1", NULL);
  assert_int_equal(mw__event_seal(ev, seq, "e1"), 0);
  return ev;
}

/* What the test expects on the wire. */
typedef struct expect {
  char *buf;
  size_t len, cap;
} expect_t;

static void expect_add(expect_t *e, const void *p, size_t n) {
  if (e->len + n > e->cap) {
    e->cap = (e->len + n) * 2;
    e->buf = realloc(e->buf, e->cap);
    assert_non_null(e->buf);
  }
  memcpy(e->buf + e->len, p, n);
  e->len += n;
}

/* Queues `n` writes of every kind: inline copies, malloc'd copies, shared
 * event bytes with a prefix and a suffix. */
static void queue_mix(mw_conn_t *c, expect_t *e, mw_event_t *ev, int n,
                      int seed) {
  char big[300];
  for (int i = 0; i < n; i++) {
    char small[16];
    int k = (i + seed) % 3;
    if (k == 0) {
      snprintf(small, sizeof small, "<%05d>", (i + seed) % 100000);
      assert_int_equal(mw__conn_write(c, small, 7, 1), 0);
      expect_add(e, small, 7);
    } else if (k == 1) {
      memset(big, 'a' + (i % 26), sizeof big);
      assert_int_equal(mw__conn_write(c, big, sizeof big, 1), 0);
      expect_add(e, big, sizeof big);
    } else {
      assert_int_equal(
          mw__conn_write_event(c, "data: ", 6, ev, MW_WIRE_JSON, "\n\n", 2), 0);
      expect_add(e, "data: ", 6);
      expect_add(e, ev->wire[MW_WIRE_JSON].data, ev->wire[MW_WIRE_JSON].len);
      expect_add(e, "\n\n", 2);
    }
  }
}

/* Reads from `fd` (non-blocking) and turns the loop until `want` bytes came
 * or 10,000 rounds passed; returns what was read (malloc'd). */
static char *drain_peer(core_fixture_t *f, int fd, size_t want, size_t *got) {
  char *out = malloc(want + 1);
  assert_non_null(out);
  assert_int_equal(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
  size_t n = 0;
  for (int round = 0; n < want && round < 10000; round++) {
    ssize_t r = read(fd, out + n, want - n);
    if (r > 0)
      n += (size_t)r;
    else if (r < 0)
      assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
    uv_run(&f->worker.loop, UV_RUN_NOWAIT);
    mw__conn_flush_dirty(&f->worker); /* the prepare handle's work */
  }
  *got = n;
  return out;
}

static void assert_idle(const mw_worker_t *w, const mw_conn_t *c) {
  assert_int_equal(c->queued, 0);
  assert_int_equal(c->qcount, 0);
  assert_int_equal(w->outbound_bytes, 0);
  assert_ptr_equal(c->q, c->qin); /* no ring kept */
  assert_null(c->wr);             /* no write state kept */
  assert_false(c->writing);
}

static void test_idle_connection_holds_nothing(void **state) {
  core_fixture_t *f = *state;
  mw_worker_t *w = &f->worker;
  mw_conn_t *c = fixture_conn(f);
  int peer = f->peers[f->npeers - 1];
  assert_null(c->wr);
  assert_ptr_equal(c->q, c->qin);
  /* More entries than the inline slots: a ring, freed once written. */
  expect_t e = {0};
  mw_event_t *ev = sealed("t", 1);
  queue_mix(c, &e, ev, 12, 0);
  mw_event_unref(&ev);
  assert_ptr_not_equal(c->q, c->qin);
  assert_int_equal(w->outbound_bytes, e.len);
  assert_int_equal(c->queued, e.len);
  mw__conn_flush_dirty(w); /* all of it fits the socket: written at once */
  assert_idle(w, c);
  size_t got;
  char *out = drain_peer(f, peer, e.len, &got);
  assert_int_equal(got, e.len);
  assert_memory_equal(out, e.buf, e.len);
  free(out);
  free(e.buf);
}

static void test_full_socket_waits_in_order(void **state) {
  core_fixture_t *f = *state;
  mw_worker_t *w = &f->worker;
  mw_conn_t *c = fixture_conn(f);
  int peer = f->peers[f->npeers - 1];
  expect_t e = {0};
  mw_event_t *ev = sealed("t", 1);
  /* About 1.5 MB: more than a socketpair buffers. */
  queue_mix(c, &e, ev, 12000, 0);
  assert_int_equal(w->outbound_bytes, e.len);
  mw__conn_flush_dirty(w);
  assert_true(c->writing); /* the rest waits in one uv_write */
  assert_non_null(c->wr);
  assert_true(c->queued < e.len);
  assert_int_equal(w->outbound_bytes, c->queued);
  /* More while the write is in flight: the ring grows, the entries libuv
   * holds keep their bytes (ASan would see a use after free otherwise). */
  queue_mix(c, &e, ev, 3000, 1);
  mw_event_unref(&ev);
  assert_int_equal(w->outbound_bytes, c->queued);
  size_t got;
  char *out = drain_peer(f, peer, e.len, &got);
  assert_int_equal(got, e.len);
  assert_memory_equal(out, e.buf, e.len);
  assert_idle(w, c);
  free(out);
  free(e.buf);
}

/* A peer that never reads: close waits for the flush at most the close
 * deadline (2 s), served by the worker's timer, which closes with the last
 * connection so that the loop ends. */
static void test_close_deadline(void **state) {
  core_fixture_t *f = *state;
  mw_worker_t *w = &f->worker;
  mw_conn_t *c = fixture_conn(f);
  expect_t e = {0};
  mw_event_t *ev = sealed("t", 1);
  queue_mix(c, &e, ev, 12000, 0);
  mw_event_unref(&ev);
  mw__conn_flush_dirty(w);
  assert_true(c->writing);
  mw__conn_close(c);
  assert_non_null(w->conn_timer);
  uint64_t t0 = uv_now(&w->loop);
  uv_run(&w->loop, UV_RUN_DEFAULT); /* returns once c is gone */
  assert_true(uv_now(&w->loop) - t0 >= 2000);
  assert_int_equal(w->conn_count, 0);
  assert_null(w->conn_timer);
  assert_int_equal(w->outbound_bytes, 0);
  free(e.buf);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_idle_connection_holds_nothing, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_full_socket_waits_in_order, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_close_deadline, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
