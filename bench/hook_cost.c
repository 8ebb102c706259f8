/* mw_hook_cost: nanoseconds per Lua policy hook call (SPEC §4), measured
 * through the same engine API the core uses (core/policy.h).
 *
 * Each case loads a small script (written to a temporary directory), makes
 * one identity with on_connect, warms up, then times `iters` calls in `reps`
 * repetitions and reports the median and the best repetition. The event is a
 * realistic sealed event (topic, name, trace id, ~100 bytes of data).
 *
 * Deliver cases are measured as the hub calls them: one sealed event fanned
 * out to many recipients, so the event's Lua table is built once and reused
 * ("per recipient"); the "new event" cases change the event on every call
 * and show the per-event cost of building that table. The baseline cases
 * are what the hub does per recipient when the script has no on_deliver.
 *
 * Output: one JSON object per line (stdout, or --json FILE) and a table on
 * stderr.
 *
 *   mw_hook_cost [--iters N] [--reps R] [--case NAME] [--json FILE] [--quiet]
 *
 * --case runs only the cases whose name contains NAME (for profiling, e.g.
 * valgrind --tool=callgrind mw_hook_cost --case on_deliver_unchanged). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "event.h"
#include "log.h"
#include "policy.h"

#define MAX_REPS 21

static const char *const ON_CONNECT =
    "function on_connect(req)\n"
    "  return {user_id = req.token or 'anon', tenant_id = 't1',\n"
    "          claims = {role = 'reader', plan = 'pro'}}\n"
    "end\n";

typedef struct script {
  const char *name;
  const char *body; /* appended to ON_CONNECT unless raw */
  int raw;          /* the body is the whole script */
} script_t;

static const script_t scripts[] = {
    {"none", "-- no hooks\n", 1},
    {"connect_only", "", 0},
    {"subscribe", "function on_subscribe(conn, topic) return true end\n", 0},
    {"subscribe_match",
     "function on_subscribe(conn, topic)\n"
     "  return moonwire.match('gift-list:*', topic)\n"
     "end\n",
     0},
    {"publish", "function on_publish(conn, event) return event end\n", 0},
    {"deliver_pass", "function on_deliver(conn, event) return event end\n", 0},
    {"deliver_tenant_check",
     "function on_deliver(conn, event)\n"
     "  if event.data.tenant_id and event.data.tenant_id ~= conn.tenant_id "
     "then\n"
     "    return nil\n"
     "  end\n"
     "  return event\n"
     "end\n",
     0},
    {"deliver_copy",
     "function on_deliver(conn, event)\n"
     "  local e = moonwire.copy(event)\n"
     "  e.data.user_id = nil\n"
     "  return e\n"
     "end\n",
     0},
    {"deliver_copy_memo",
     "local last, out\n"
     "function on_deliver(conn, event)\n"
     "  if event ~= last then\n"
     "    last = event\n"
     "    out = moonwire.copy(event)\n"
     "    out.data.user_id = nil\n"
     "  end\n"
     "  return out\n"
     "end\n",
     0},
    {"deliver_nil", "function on_deliver(conn, event) return nil end\n", 0},
};

enum {
  S_NONE,
  S_CONNECT,
  S_SUB,
  S_SUB_MATCH,
  S_PUB,
  S_DPASS,
  S_DTENANT,
  S_DCOPY,
  S_DMEMO,
  S_DNIL,
  S_COUNT
};

static char tmpdir[256];
static char paths[S_COUNT][512];

/* A realistic event: SPEC §3's example, about 100 bytes of data. */
#define DATA_JSON                                                              \
  "{\"entity_id\":\"gift-7\",\"payload\":{\"name\":\"Bike\",\"price\":129},"   \
  "\"user_id\":\"u1\",\"tenant_id\":\"t1\","                                   \
  "\"timestamp\":\"2026-11-23T10:00:00.000Z\"}"
#define TOPIC "gift-list:family-123"

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, const char *a) {
  fprintf(stderr, "mw_hook_cost: ");
  fprintf(stderr, fmt, a);
  fprintf(stderr, "\n");
  exit(1);
}

static void write_scripts(void) {
  snprintf(tmpdir, sizeof tmpdir, "%s/mw_hook_cost.XXXXXX",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(tmpdir)) die("mkdtemp: %s", strerror(errno));
  for (int i = 0; i < S_COUNT; i++) {
    snprintf(paths[i], sizeof paths[i], "%s/%s.lua", tmpdir, scripts[i].name);
    FILE *f = fopen(paths[i], "w");
    if (!f) die("cannot write %s", paths[i]);
    if (!scripts[i].raw) fputs(ON_CONNECT, f);
    fputs(scripts[i].body, f);
    fclose(f);
  }
}

static void remove_scripts(void) {
  for (int i = 0; i < S_COUNT; i++)
    unlink(paths[i]);
  rmdir(tmpdir);
}

static mw_policy_t *load(int which) {
  char err[512];
  mw_policy_limits_t lim = {.budget_ms = 50, .memory_bytes = 0};
  mw_policy_t *p = mw__policy_new(paths[which], &lim, err, sizeof err);
  if (!p) die("loading a script: %s", err);
  return p;
}

static mw_event_t *make_event(uint64_t seq) {
  json_error_t je;
  json_t *d = json_loads(DATA_JSON, 0, &je);
  if (!d) die("bad data json: %s", je.text);
  mw_event_t *ev = mw__event_draft(TOPIC, "UPDATED", "4bf92f3577b34da6", d);
  if (mw__event_seal(ev, seq, "ep1")) die("%s", "seal failed");
  return ev;
}

static void make_identity(mw_policy_t *p, mw_policy_identity_t *id) {
  mw_policy_pair_t q[1] = {{"x", "1"}};
  mw_policy_pair_t h[2] = {{"user-agent", "bench"}, {"origin", "http://x"}};
  mw_policy_connect_req_t req = {.transport = "websocket",
                                 .remote_addr = "127.0.0.1",
                                 .headers = h,
                                 .nheaders = 2,
                                 .query = q,
                                 .nquery = 1,
                                 .token = "u42"};
  mw_policy_result_t res;
  memset(id, 0, sizeof *id);
  mw__policy_connect(p, &req, "ws-1-1", id, &res);
  if (res.status != MW_POLICY_OK || res.verdict != MW_VERDICT_ALLOW)
    die("on_connect failed: %s", res.reason);
}

/* ---- the cases ---- */

typedef struct ctx {
  mw_policy_t *p;
  mw_policy_identity_t id;
  mw_event_t *ev;     /* the event fanned out */
  mw_event_t *evs[2]; /* alternated by the "new event" cases */
  json_t *pub;        /* on_publish's input */
  const json_t *data;
  uint64_t bad; /* unexpected verdicts */
  mw_policy_verdict_t want;
} ctx_t;

typedef void (*case_fn)(ctx_t *c, uint64_t i);

static void c_connect(ctx_t *c, uint64_t i) {
  mw_policy_pair_t h[2] = {{"user-agent", "bench"}, {"origin", "http://x"}};
  mw_policy_pair_t q[1] = {{"x", "1"}};
  mw_policy_connect_req_t req = {.transport = "websocket",
                                 .remote_addr = "127.0.0.1",
                                 .headers = h,
                                 .nheaders = 2,
                                 .query = q,
                                 .nquery = 1,
                                 .token = "u42"};
  mw_policy_identity_t id;
  mw_policy_result_t res;
  memset(&id, 0, sizeof id);
  mw__policy_connect(c->p, &req, "ws-1-2", &id, &res);
  if (res.status != MW_POLICY_OK || res.verdict != MW_VERDICT_ALLOW) c->bad++;
  mw__policy_result_clear(&res);
  mw__policy_identity_free(c->p, &id);
  (void)i;
}

static void c_subscribe(ctx_t *c, uint64_t i) {
  mw_policy_result_t res;
  mw__policy_subscribe(c->p, &c->id, "gift-list:family-123", &res);
  if (res.status != MW_POLICY_OK || res.verdict != MW_VERDICT_ALLOW) c->bad++;
  mw__policy_result_clear(&res);
  (void)i;
}

static void c_publish(ctx_t *c, uint64_t i) {
  mw_policy_result_t res;
  mw__policy_publish(c->p, NULL, c->pub, &res);
  if (res.status != MW_POLICY_OK || res.verdict != MW_VERDICT_ALLOW) c->bad++;
  mw__policy_result_clear(&res);
  (void)i;
}

static void check_deliver(ctx_t *c, mw_policy_result_t *res) {
  if (res->status != MW_POLICY_OK || res->verdict != c->want) c->bad++;
  mw__policy_result_clear(res);
}

/* One event, many recipients (the hub's fan-out). */
static void c_deliver(ctx_t *c, uint64_t i) {
  mw_policy_result_t res;
  mw__policy_deliver(c->p, &c->id, c->ev, c->data, &res);
  check_deliver(c, &res);
  (void)i;
}

/* A different event on every call: the event table is built every time. */
static void c_deliver_new(ctx_t *c, uint64_t i) {
  mw_policy_result_t res;
  mw_event_t *ev = c->evs[i & 1];
  mw__policy_deliver(c->p, &c->id, ev, mw__event_data(ev), &res);
  check_deliver(c, &res);
}

/* A changed result plus what the hub does with it (core/hub.c
 * changed_event): the result's out_key is looked up among the results
 * already sealed for this event; only a new key is encoded (the seal,
 * stood for here by one json_dumps). Equal results must share a key: a
 * second key for the same content counts as an error. */
static void c_deliver_hub_changed(ctx_t *c, uint64_t i) {
  static const void *keys[16];
  static size_t nkeys;
  mw_policy_result_t res;
  mw__policy_deliver(c->p, &c->id, c->ev, c->data, &res);
  if (res.status != MW_POLICY_OK || res.verdict != MW_VERDICT_CHANGED) c->bad++;
  size_t k = 0;
  while (k < nkeys && keys[k] != res.out_key)
    k++;
  if (k == nkeys) {
    char *text = json_dumps(res.out, JSON_COMPACT);
    if (!text) c->bad++;
    free(text);
    if (nkeys < 16) keys[nkeys++] = res.out_key;
    if (nkeys > 1) c->bad++;
  }
  mw__policy_result_clear(&res);
  (void)i;
}

/* The hub without on_deliver: the per-recipient checks in
 * mw__hub_deliver (hook present? tenant transform? tenant isolation). */
static volatile uint64_t sink;
static void c_hub_nohook(ctx_t *c, uint64_t i) {
  const char *tenant = c->id.tenant_id;
  const char *ev_tenant = "t1";
  int hook = c->p && mw__policy_has_deliver(c->p);
  int skip = tenant && ev_tenant && !c->id.all_tenants &&
             strcmp(tenant, ev_tenant) != 0;
  if (!skip &&
      (hook || (tenant && mw__policy_tenant_has_transform(c->p, tenant))))
    c->bad++;
  sink += (uint64_t)skip + i;
}

/* mw__policy_deliver called anyway on a script without on_deliver (it
 * returns at once). */
static void c_deliver_nohook(ctx_t *c, uint64_t i) {
  c_deliver(c, i);
}

typedef struct bcase {
  const char *name;
  const char *what;
  int script;
  case_fn fn;
  mw_policy_verdict_t want;
  int deliver;
} bcase_t;

static const bcase_t cases[] = {
    {"on_connect", "on_connect -> identity (+ identity_free)", S_CONNECT,
     c_connect, MW_VERDICT_ALLOW, 0},
    {"on_subscribe", "on_subscribe -> true", S_SUB, c_subscribe,
     MW_VERDICT_ALLOW, 0},
    {"on_subscribe_match", "on_subscribe -> moonwire.match(...)", S_SUB_MATCH,
     c_subscribe, MW_VERDICT_ALLOW, 0},
    {"on_publish", "on_publish -> event (unchanged)", S_PUB, c_publish,
     MW_VERDICT_ALLOW, 0},
    {"on_deliver_unchanged", "on_deliver -> event (per recipient)", S_DPASS,
     c_deliver, MW_VERDICT_ALLOW, 1},
    {"on_deliver_unchanged_new_event",
     "on_deliver -> event (new event each call)", S_DPASS, c_deliver_new,
     MW_VERDICT_ALLOW, 1},
    {"on_deliver_tenant_check", "on_deliver: tenant check -> event", S_DTENANT,
     c_deliver, MW_VERDICT_ALLOW, 1},
    {"on_deliver_copy", "on_deliver -> moonwire.copy(event) minus a field",
     S_DCOPY, c_deliver, MW_VERDICT_CHANGED, 1},
    {"on_deliver_copy_hub", "  same + the hub's lookup of the result (one key)",
     S_DCOPY, c_deliver_hub_changed, MW_VERDICT_CHANGED, 1},
    {"on_deliver_copy_memo", "on_deliver -> copy made once per event", S_DMEMO,
     c_deliver, MW_VERDICT_CHANGED, 1},
    {"on_deliver_nil", "on_deliver -> nil (drop)", S_DNIL, c_deliver,
     MW_VERDICT_DROP, 1},
    {"no_on_deliver_hub", "no on_deliver: hub's per-recipient checks", S_NONE,
     c_hub_nohook, MW_VERDICT_ALLOW, 1},
    {"no_on_deliver_call", "no on_deliver: mw__policy_deliver called anyway",
     S_NONE, c_deliver_nohook, MW_VERDICT_ALLOW, 1},
};

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  uint64_t iters = 200000;
  int reps = 5;
  const char *json_path = NULL;
  const char *only = NULL;
  int quiet = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--iters") && i + 1 < argc) {
      iters = strtoull(argv[++i], NULL, 10);
    } else if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
      reps = atoi(argv[++i]);
    } else if (!strcmp(argv[i], "--json") && i + 1 < argc) {
      json_path = argv[++i];
    } else if (!strcmp(argv[i], "--case") && i + 1 < argc) {
      only = argv[++i];
    } else if (!strcmp(argv[i], "--quiet")) {
      quiet = 1;
    } else {
      fprintf(stderr,
              "usage: %s [--iters N] [--reps R] [--case NAME] "
              "[--json FILE] [--quiet]\n",
              argv[0]);
      return 2;
    }
  }
  if (iters < 1000) iters = 1000;
  if (reps < 1) reps = 1;
  if (reps > MAX_REPS) reps = MAX_REPS;
  FILE *out = stdout;
  if (json_path && !(out = fopen(json_path, "w")))
    die("cannot write %s", json_path);

  mw__log_setup(MW_LOG_ERROR, 0);
  write_scripts();
  json_error_t je;
  json_t *pub = json_pack("{s:s, s:s, s:o, s:s}", "topic", TOPIC, "event",
                          "UPDATED", "data", json_loads(DATA_JSON, 0, &je),
                          "trace_id", "4bf92f3577b34da6");
  mw_event_t *probe = make_event(1);
  size_t data_len = probe->data_json.len, wire_len = probe->wire[0].len;
  mw_event_unref(&probe);

  if (!quiet)
    fprintf(stderr,
            "hook cost: %llu calls x %d reps after %llu warm-up calls; "
            "event data %zu bytes (envelope %zu)\n\n"
            "%-52s %10s %10s\n",
            (unsigned long long)iters, reps, (unsigned long long)(iters / 10),
            data_len, wire_len, "case", "ns/call", "best");
  int failed = 0;
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    const bcase_t *bc = &cases[k];
    if (only && !strstr(bc->name, only)) continue;
    ctx_t c;
    memset(&c, 0, sizeof c);
    c.p = load(bc->script);
    make_identity(c.p, &c.id);
    c.ev = make_event(7);
    c.evs[0] = make_event(8);
    c.evs[1] = make_event(9);
    c.data = mw__event_data(c.ev);
    c.pub = pub;
    c.want = bc->want;
    for (uint64_t i = 0; i < iters / 10; i++)
      bc->fn(&c, i);
    double per[MAX_REPS];
    for (int r = 0; r < reps; r++) {
      uint64_t t0 = now_ns();
      for (uint64_t i = 0; i < iters; i++)
        bc->fn(&c, i);
      per[r] = (double)(now_ns() - t0) / (double)iters;
    }
    qsort(per, (size_t)reps, sizeof per[0], cmp_double);
    double med = per[reps / 2], best = per[0];
    if (c.bad) {
      fprintf(stderr, "mw_hook_cost: %s: %llu unexpected results\n", bc->name,
              (unsigned long long)c.bad);
      failed = 1;
    }
    fprintf(out,
            "{\"bench\":\"hook_cost\",\"case\":\"%s\",\"ns_per_call\":%.1f,"
            "\"best_ns\":%.1f,\"iters\":%llu,\"reps\":%d,\"data_bytes\":%zu,"
            "\"errors\":%llu}\n",
            bc->name, med, best, (unsigned long long)iters, reps, data_len,
            (unsigned long long)c.bad);
    fflush(out);
    if (!quiet) fprintf(stderr, "%-52s %10.1f %10.1f\n", bc->what, med, best);
    mw__policy_identity_free(c.p, &c.id);
    mw_event_unref(&c.ev);
    mw_event_unref(&c.evs[0]);
    mw_event_unref(&c.evs[1]);
    mw__policy_free(c.p);
  }
  json_decref(pub);
  remove_scripts();
  if (out != stdout) fclose(out);
  return failed;
}
