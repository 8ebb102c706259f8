/* A fake mw_host_v1_t for plugin unit tests: no sockets, no core.
 *
 * - HTTP: tests build requests (fake_request_new), call the route the plugin
 *   registered (fake_route_call) and read the answer from the request
 *   (status, headers, body) or the taken connection.
 * - Connections: every written byte lands in conn->out (the head, frames,
 *   event prefix + shared wire bytes + suffix). conn_close only marks the
 *   connection; on_close fires on fake_conn_fire_close / fake_host_close_all
 *   (or at once inside conn_close when fake.sync_close is set).
 * - Hub and storage: subscribe/unsubscribe/publish/topic_position are
 *   recorded and answered synchronously, deferred, or with a returned error,
 *   as the test chooses.
 * - Config: defaults unless overridden with fake_config_set.
 * One fake host per process; fake_host_init resets everything. */
#ifndef MW_TEST_FAKE_HOST_H
#define MW_TEST_FAKE_HOST_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "moonwire/plugin.h"

#define FAKE_MAX_HEADERS 16
#define FAKE_MAX_TOPICS 64
#define FAKE_MAX_CALLS 64

/* How publish / topic_position answer. */
typedef enum fake_mode {
  FAKE_SYNC = 0, /* call the callback before returning */
  FAKE_DEFER,    /* keep it; fake_publish_fire / fake_position_fire */
  FAKE_FAIL      /* return the configured status; no callback */
} fake_mode_t;

struct mw_http_request {
  const char *method, *path;
  const char *hname[FAKE_MAX_HEADERS], *hvalue[FAKE_MAX_HEADERS];
  int nheaders;
  const char *trailing; /* bytes after the request, handed on take */
  size_t trailing_len;
  /* the answer */
  int responded;
  int status;
  char *content_type, *extra_headers, *body;
  size_t body_len;
  struct mw_conn *taken;
  /* query parameters (fake_request_query) */
  const char *qname[FAKE_MAX_HEADERS], *qvalue[FAKE_MAX_HEADERS];
  int nquery;
  /* http_on_abort */
  mw_abort_fn abort_fn;
  void *abort_ud;
  int aborted;
};

struct mw_conn {
  mw_stream_handler_t h;
  void *ud;
  char *out; /* every byte written */
  size_t len, alloc;
  size_t read_off; /* tests' read cursor into out */
  size_t cap;      /* non-forced writes past len+n > cap overflow; 0: none */
  int closed;      /* conn_close called */
  int close_fired; /* on_close ran */
  int overflows;   /* on_overflow calls */
  int event_writes;
  mw_event_t *last_event;
  struct mw_conn *next;
};

struct mw_client {
  mw_deliver_fn deliver;
  void (*kick)(mw_client_t *c, const char *reason, void *ud); /* set_kick */
  void *ud;
  char *topics[FAKE_MAX_TOPICS];
  int ntopics;
  struct mw_client *next;
  /* client_position: per topic (same index as topics[]) */
  uint64_t pos[FAKE_MAX_TOPICS];
  char pos_epoch[FAKE_MAX_TOPICS][40];
};

typedef struct fake_call {
  char op[16];    /* "subscribe", "unsubscribe", "publish", "position" */
  char arg[300];  /* the topic */
  char data[512]; /* publish: data_json */
  char event[64]; /* publish: event name */
} fake_call_t;

typedef struct fake_state {
  mw_host_v1_t host;
  uv_loop_t *loop;
  int sync_close; /* conn_close fires on_close at once */
  int max_topics; /* subscribe answers MW_ELIMIT past this (default 256) */
  /* publish */
  fake_mode_t publish_mode;
  int publish_status;
  const char *publish_reason;
  uint64_t publish_seq; /* seq of the next successful publish */
  mw_publish_cb publish_cb;
  void *publish_ud;
  mw_event_t *publish_fanout; /* FAKE_SYNC: delivered to the topic's
                                 subscribers before the callback, like a
                                 storage that fans out synchronously */
  /* topic_position */
  fake_mode_t position_mode;
  int position_status;
  uint64_t position_seq;
  const char *position_epoch;
  mw_position_cb position_cb[FAKE_MAX_CALLS];
  void *position_ud[FAKE_MAX_CALLS];
  int position_deferred;
  /* records */
  fake_call_t calls[FAKE_MAX_CALLS];
  int ncalls;
  int clients_live;
  int event_refs; /* event_ref minus event_unref */
  /* identity (ABI 1.1) */
  int policy_has_connect; /* policy_has_connect answers this */
  int request_token;      /* client_has_token answers this */
  int connect_status;     /* client_connect returns this (0: allowed) */
  int connect_code;       /* ... with this code */
  const char *connect_reason;
  char connect_token[64];     /* the token client_connect was given ("" none) */
  int connects;               /* client_connect calls */
  const char *subscribe_deny; /* subscribe answers MW_EDENIED for this topic */
  const char *presence_json;  /* presence answers this (NULL: MW_ENOTFOUND) */
  int recover_recovered;      /* subscribe_since reports this */
  uint64_t recover_since;     /* ... and records the since it was given */
  char recover_epoch[40];
  char disconnect_reason[64]; /* what client_disconnect was told */
  /* ABI 1.2 additions */
  int cors_deny;                     /* http_cors answers MW_EDENIED */
  const char *cors_headers;          /* ... otherwise copies these (NULL: "") */
  int subscribe_deny_code;           /* with subscribe_deny_reason: what */
  const char *subscribe_deny_reason; /* client_error tells after a deny */
  int subscribe_denied;              /* the last refusal was a subscribe deny */
  int recover_status;                /* subscribe_since's callback status (0) */
  mw_event_t **recover_replay; /* delivered after the callback, like the */
  int recover_nreplay;         /* core's history replay (when recovered) */
} fake_state_t;

extern fake_state_t fake;

/* Resets the fake; `loop` is what worker_loop returns. */
void fake_host_init(uv_loop_t *loop);
/* Fires on_close for every connection not closed yet, then frees the
 * connections, requests and clients. */
void fake_host_close_all(void);
/* Frees everything the fake allocated (after close_all). */
void fake_host_reset(void);

const mw_host_v1_t *fake_host(void);
mw_worker_t *fake_worker(void);
mw_plugin_handle_t *fake_plugin_handle(void);

void fake_config_set(const char *key, int64_t value);

/* A request with headers given as name, value, ..., NULL (names lower-case). */
mw_http_request_t *fake_request_new(const char *method, const char *path,
                                    const char *const *headers);
/* Calls the route registered for METHOD PATH; 0, or -1 if none. */
int fake_route_call(const char *method, const char *path,
                    mw_http_request_t *req, void *worker_state);

/* Adds a query parameter to a request (strings are borrowed). */
void fake_request_query(mw_http_request_t *req, const char *name,
                        const char *value);
/* The peer left: calls the request's abort callback (if any) and marks the
 * request aborted, as the core does. */
void fake_request_abort(mw_http_request_t *req);

/* Hands `len` bytes to the connection's on_data. */
void fake_conn_feed(mw_conn_t *c, const void *data, size_t len);
/* Runs on_close once, as the core does after conn_close. */
void fake_conn_fire_close(mw_conn_t *c);

/* The deliver function of every live client subscribed to `topic`. */
int fake_hub_deliver(const char *topic, mw_event_t *ev);
/* 1 if the client has `topic`. */
int fake_client_has(const mw_client_t *c, const char *topic);
/* The most recent live client, or NULL. */
mw_client_t *fake_last_client(void);

/* Fires the deferred publish callback with `status` (0: seq publish_seq). */
void fake_publish_fire(int status);
/* Fires every deferred position callback with `status`. */
void fake_position_fire(int status);

/* The count of calls recorded for `op` (and `arg` when not NULL). */
int fake_calls(const char *op, const char *arg);

/* A metric's value, or -1 when it was never registered. */
int64_t fake_metric_value(const char *name, const char *labels);

#endif
