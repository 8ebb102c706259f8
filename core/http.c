/* HTTP/1.1 over a connection with llhttp: see http.h.
 *
 * Pipelining: requests are parsed as their bytes arrive and dispatched at
 * once, up to MW_HTTP_PIPELINE of them outstanding per connection (and about
 * one maximum-size request's worth of bytes: request line, headers, bodies
 * and held answers). Answers go out strictly in request order: the first
 * outstanding request (the head) writes its answer straight to the
 * connection; an answer that completes before the ones ahead of it is held
 * (one copy) and written when they are. Past the bounds, bytes read wait
 * unparsed in `pending` and reading stops (TCP pushes back) until answers
 * resume it; while no bytes wait, reading stays on so that a peer that
 * leaves is noticed (abort callbacks run, orphans are freed).
 *
 * A request that may take the connection over (an Upgrade, or any plugin
 * route: WebSocket, SSE, long-poll) is a barrier: it is dispatched only once
 * it is the head, and nothing after it is parsed until it is answered (its
 * bytes are handed to the new owner if it takes over). Connection: close, an
 * Upgrade or a parse error ends the pipeline: nothing after it is parsed.
 *
 * Limits: request line (414), headers (431), body (413); anything llhttp
 * rejects is a 400. Each rejection is answered in order after the requests
 * before it, closes the connection and is counted. */
#include "http.h"

#include <ctype.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cors.h"
#include "log.h"
#include "metrics.h"
#include "server.h"

#define MW_MAX_HEADERS 100
#define MW_MAX_QUERY_PARAMS 100

typedef struct kv {
  char *name;
  char *value;
} kv_t;

struct mw_http_request {
  mw_conn_t *conn; /* NULL once the peer left (orphaned) */
  mw_worker_t *worker;
  mw_http_request_t *next; /* the next outstanding request of conn */
  char method[16];
  char *url;
  size_t url_len;
  char *path;
  kv_t *headers;
  size_t nheaders;
  kv_t *query;
  size_t nquery;
  int query_parsed;
  char *body;
  size_t body_len;
  int upgrade;
  int keep_alive;
  int complete;
  int barrier;    /* may take the connection: dispatched only at the head */
  int dispatched; /* handed to its handler */
  int answered;   /* answer held below until the requests ahead are written */
  const mw_route_t *route;
  int path_known;
  size_t cost; /* bytes counted in the state's out_bytes */
  /* a held answer: one block "content-type\0extra headers\0body" */
  char *held;
  int held_status;
  size_t held_extra, held_body, held_len;
  mw_abort_fn abort_fn;
  void *abort_ud;
  int orphaning; /* in mw__http_on_close's list: an answer only marks it */
};

struct mw_http_state {
  llhttp_t parser;
  mw_conn_t *conn;
  mw_http_request_t *req;         /* being received */
  mw_http_request_t *head, *tail; /* outstanding, in request order */
  size_t nout;                    /* outstanding requests */
  size_t out_bytes;               /* their costs (requests, held answers) */
  size_t max_ahead;               /* out_bytes past which parsing waits */
  char *field, *value;
  size_t field_len, value_len;
  int in_value;
  size_t header_bytes;
  char *pending; /* unparsed bytes that arrived past the bounds */
  size_t pending_len;
  int in_process; /* process() is on the stack (or the HTTP side is over) */
  int advancing;  /* advance() is on the stack */
  int ended;      /* nothing more is parsed: close, Upgrade, parse error */
  int error_status;
  size_t max_line, max_headers, max_body;
  uint64_t idle_ms;
};

static mw_metric_t *m_rej_400, *m_rej_413, *m_rej_414, *m_rej_431, *m_requests;
static llhttp_settings_t settings;

/* --- small helpers ------------------------------------------------------ */

const char *mw__http_status_text(int status) {
  switch (status) {
  case 101:
    return "Switching Protocols";
  case 200:
    return "OK";
  case 204:
    return "No Content";
  case 400:
    return "Bad Request";
  case 401:
    return "Unauthorized";
  case 403:
    return "Forbidden";
  case 404:
    return "Not Found";
  case 405:
    return "Method Not Allowed";
  case 408:
    return "Request Timeout";
  case 413:
    return "Payload Too Large";
  case 414:
    return "URI Too Long";
  case 426:
    return "Upgrade Required";
  case 429:
    return "Too Many Requests";
  case 431:
    return "Request Header Fields Too Large";
  case 500:
    return "Internal Server Error";
  case 501:
    return "Not Implemented";
  case 503:
    return "Service Unavailable";
  default:
    return "Unknown";
  }
}

static void append(char **buf, size_t *len, const char *at, size_t n) {
  *buf = mw_xrealloc(*buf, *len + n + 1);
  memcpy(*buf + *len, at, n);
  *len += n;
  (*buf)[*len] = 0;
}

static void request_free(mw_http_request_t *r) {
  if (!r) return;
  free(r->url);
  free(r->path);
  for (size_t i = 0; i < r->nheaders; i++) {
    free(r->headers[i].name);
    free(r->headers[i].value);
  }
  free(r->headers);
  for (size_t i = 0; i < r->nquery; i++) {
    free(r->query[i].name);
    free(r->query[i].value);
  }
  free(r->query);
  free(r->body);
  free(r->held);
  free(r);
}

static mw_http_state_t *state_of(llhttp_t *p) {
  return (mw_http_state_t *)p->data;
}

static int limit_error(mw_http_state_t *st, int status) {
  st->error_status = status;
  return -1;
}

/* --- the queue of outstanding requests ---------------------------------- */

static void enqueue(mw_http_state_t *st, mw_http_request_t *r) {
  r->next = NULL;
  if (st->tail)
    st->tail->next = r;
  else
    st->head = r;
  st->tail = r;
  st->nout++;
  st->out_bytes += r->cost;
}

static void dequeue_head(mw_http_state_t *st) {
  mw_http_request_t *r = st->head;
  st->head = r->next;
  if (!st->head) st->tail = NULL;
  r->next = NULL;
  st->nout--;
  st->out_bytes -= r->cost;
}

/* 1 while parsing must wait: too many requests or bytes outstanding, too
 * many answer bytes not yet taken by the socket (the peer does not read), a
 * barrier outstanding, the pipeline ended, or the worker draining. */
static int must_wait(const mw_http_state_t *st) {
  return st->ended || st->nout >= MW_HTTP_PIPELINE ||
         st->out_bytes >= st->max_ahead ||
         mw__conn_queued(st->conn) >= MW_HTTP_QUEUE_AHEAD ||
         (st->tail && st->tail->barrier) ||
         (st->nout && st->conn->worker->draining);
}

/* --- llhttp callbacks --------------------------------------------------- */

static int on_message_begin(llhttp_t *p) {
  mw_http_state_t *st = state_of(p);
  request_free(st->req);
  st->req = mw_xcalloc(1, sizeof *st->req);
  st->req->conn = st->conn;
  st->req->worker = st->conn->worker;
  st->header_bytes = 0;
  st->in_value = 0;
  st->field_len = st->value_len = 0;
  return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n) {
  mw_http_state_t *st = state_of(p);
  if (st->req->url_len + n > st->max_line) return limit_error(st, 414);
  append(&st->req->url, &st->req->url_len, at, n);
  return 0;
}

static int commit_header(mw_http_state_t *st) {
  mw_http_request_t *r = st->req;
  if (r->nheaders == MW_MAX_HEADERS) return limit_error(st, 431);
  r->headers = mw_xrealloc(r->headers, (r->nheaders + 1) * sizeof *r->headers);
  kv_t *h = &r->headers[r->nheaders++];
  h->name = st->field ? st->field : mw_xstrdup("");
  h->value = st->value ? st->value : mw_xstrdup("");
  for (char *c = h->name; *c; c++)
    *c = (char)tolower((unsigned char)*c);
  st->field = st->value = NULL;
  st->field_len = st->value_len = 0;
  st->in_value = 0;
  return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n) {
  mw_http_state_t *st = state_of(p);
  if (st->in_value && commit_header(st)) return -1;
  st->header_bytes += n;
  if (st->header_bytes > st->max_headers) return limit_error(st, 431);
  append(&st->field, &st->field_len, at, n);
  return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n) {
  mw_http_state_t *st = state_of(p);
  st->in_value = 1;
  st->header_bytes += n;
  if (st->header_bytes > st->max_headers) return limit_error(st, 431);
  append(&st->value, &st->value_len, at, n);
  return 0;
}

static int on_headers_complete(llhttp_t *p) {
  mw_http_state_t *st = state_of(p);
  mw_http_request_t *r = st->req;
  if ((st->in_value || st->field) && commit_header(st)) return -1;
  snprintf(r->method, sizeof r->method, "%s",
           llhttp_method_name((llhttp_method_t)p->method));
  if ((p->flags & F_CONTENT_LENGTH) && p->content_length > st->max_body)
    return limit_error(st, 413);
  r->upgrade = p->upgrade;
  r->keep_alive = llhttp_should_keep_alive(p) && !p->upgrade;
  /* The path: origin-form "/p?q", or absolute-form "http://host/p?q". */
  const char *u = r->url ? r->url : "/";
  size_t ul = r->url ? r->url_len : 1;
  if (ul > 7 && (strncasecmp(u, "http://", 7) == 0 ||
                 (ul > 8 && strncasecmp(u, "https://", 8) == 0))) {
    const char *auth = u + (u[4] == ':' ? 7 : 8);
    const char *slash = memchr(auth, '/', ul - (size_t)(auth - u));
    const char *qm = memchr(auth, '?', ul - (size_t)(auth - u));
    const char *start = slash && (!qm || slash < qm) ? slash : NULL;
    ul -= start ? (size_t)(start - u) : ul;
    u = start ? start : "/";
    if (!start) ul = 1;
  }
  const char *q = memchr(u, '?', ul);
  r->path = mw_xstrndup(u, q ? (size_t)(q - u) : ul);
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n) {
  mw_http_state_t *st = state_of(p);
  if (st->req->body_len + n > st->max_body) return limit_error(st, 413);
  append(&st->req->body, &st->req->body_len, at, n);
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  mw_http_state_t *st = state_of(p);
  st->req->complete = 1;
  return HPE_PAUSED; /* process() queues it, then resumes */
}

static void settings_init(void) {
  llhttp_settings_init(&settings);
  settings.on_message_begin = on_message_begin;
  settings.on_url = on_url;
  settings.on_header_field = on_header_field;
  settings.on_header_value = on_header_value;
  settings.on_headers_complete = on_headers_complete;
  settings.on_body = on_body;
  settings.on_message_complete = on_message_complete;
}

/* --- connection lifecycle ----------------------------------------------- */

void mw__http_start(mw_conn_t *c) {
  static uv_once_t once = UV_ONCE_INIT;
  uv_once(&once, settings_init);
  if (!m_requests) {
    m_requests = mw__metric(MW_METRIC_COUNTER, "moonwire_http_requests_total",
                            "HTTP requests received", NULL);
    m_rej_400 = mw__metric(MW_METRIC_COUNTER, "moonwire_rejected_total",
                           "Requests or connections rejected, by reason",
                           "reason=\"bad_request\"");
    m_rej_413 = mw__metric(MW_METRIC_COUNTER, "moonwire_rejected_total", NULL,
                           "reason=\"body_too_large\"");
    m_rej_414 = mw__metric(MW_METRIC_COUNTER, "moonwire_rejected_total", NULL,
                           "reason=\"request_line_too_long\"");
    m_rej_431 = mw__metric(MW_METRIC_COUNTER, "moonwire_rejected_total", NULL,
                           "reason=\"headers_too_large\"");
  }
  mw_http_state_t *st = mw_xcalloc(1, sizeof *st);
  const mw_config_t *cfg = c->worker->server->cfg;
  st->conn = c;
  st->max_line = (size_t)mw__config_int(cfg, "limits.max_request_line", 8192);
  st->max_headers =
      (size_t)mw__config_int(cfg, "limits.max_header_size", 16384);
  st->max_body = (size_t)mw__config_int(cfg, "limits.max_body_size", 1 << 20);
  st->max_ahead = st->max_line + st->max_headers + st->max_body;
  st->idle_ms = (uint64_t)mw__config_int(cfg, "limits.idle_timeout", 60) * 1000;
  llhttp_init(&st->parser, HTTP_REQUEST, &settings);
  st->parser.data = st;
  c->http = st;
  mw__conn_idle_timer(c, st->idle_ms);
}

int mw__http_idle(const mw_conn_t *c) {
  return !c->http || !c->http->head;
}

void mw__http_on_close(mw_conn_t *c) {
  mw_http_state_t *st = c->http;
  if (!st) return;
  c->http = NULL;
  /* Orphan every outstanding request first. While this loop runs, an
   * answer to a request still ahead in it (an abort callback answering its
   * own or another request of this connection) only marks it answered: the
   * loop frees it. */
  mw_http_request_t *list = st->head;
  st->head = st->tail = NULL;
  for (mw_http_request_t *r = list; r; r = r->next) {
    r->conn = NULL;
    r->orphaning = 1;
  }
  while (list) {
    mw_http_request_t *r = list;
    list = r->next;
    r->next = NULL;
    if (r->answered || !r->dispatched) {
      request_free(r); /* ours: the handler is done with it or never saw it */
    } else if (r->abort_fn) {
      r->abort_fn(r, r->abort_ud);
      request_free(r);
    } else {
      r->orphaning = 0; /* the handler's answer will just free it */
    }
  }
  request_free(st->req);
  free(st->field);
  free(st->value);
  free(st->pending);
  free(st);
}

/* Writes status line, headers and body; `head_only` (a HEAD request) keeps
 * the Content-Length of the body but does not send it. */
static void write_response(mw_conn_t *c, int status, const char *ctype,
                           const char *extra, const char *body, size_t len,
                           int keep_alive, int head_only) {
  char head[1024];
  int n = snprintf(head, sizeof head,
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: "
                   "%zu\r\nConnection: %s\r\n%s\r\n",
                   status, mw__http_status_text(status),
                   ctype ? ctype : "text/plain", len,
                   keep_alive ? "keep-alive" : "close", extra ? extra : "");
  if (n < 0 || (size_t)n >= sizeof head) {
    mw__conn_close(c);
    return;
  }
  mw__conn_write(c, head, (size_t)n, 1);
  if (len && !head_only) mw__conn_write(c, body, len, 1);
}

void mw__http_reject(mw_conn_t *c, int status, const char *reason) {
  char body[256];
  int n = snprintf(body, sizeof body, "{\"error\":\"%s\"}", reason);
  write_response(c, status, "application/json", NULL, body, (size_t)n, 0, 0);
  mw__conn_close(c);
}

/* --- dispatch ----------------------------------------------------------- */

/* Finds the route of a complete request and whether it is a barrier: an
 * Upgrade, or a plugin route (transports take connections over; core routes
 * and the answers of http.c itself never do). */
static void classify(mw_http_request_t *r) {
  if (strcmp(r->method, "OPTIONS") == 0) { /* CORS preflight, any path */
    r->barrier = r->upgrade;
    return;
  }
  r->route = mw__server_find_route(r->method, r->path, &r->path_known);
  r->barrier = r->upgrade || (r->route && r->route->plugin);
}

static void dispatch(mw_http_request_t *r) {
  r->dispatched = 1;
  mw__metric_add(m_requests, 1);
  if (strcmp(r->method, "OPTIONS") == 0) {
    mw__cors_preflight(r);
    return;
  }
  const mw_route_t *route = r->route;
  if (!route) {
    if (r->path_known)
      mw__http_respond_json(r, 405, "{\"error\":\"method not allowed\"}");
    else
      mw__http_respond_json(r, 404, "{\"error\":\"not found\"}");
    return;
  }
  void *wstate =
      route->plugin ? mw__server_wstate(r->worker, route->plugin) : NULL;
  route->fn(r, wstate);
}

/* Writes r's answer (r is the head), dequeues and frees r. Returns 1 if the
 * connection stays open. While draining, the last outstanding answer says
 * Connection: close. */
static int write_answer(mw_http_state_t *st, mw_http_request_t *r, int status,
                        const char *ctype, const char *extra, const char *body,
                        size_t len) {
  mw_conn_t *c = st->conn;
  int keep = r->keep_alive && !(c->worker->draining && !r->next);
  write_response(c, status, ctype, extra, body, len, keep,
                 strcmp(r->method, "HEAD") == 0);
  dequeue_head(st);
  request_free(r);
  if (keep) mw__conn_idle_timer(c, st->idle_ms);
  return keep;
}

/* From the head on: writes held answers, dispatches a barrier that reached
 * the head. Stops at a request still being handled. */
static void advance(mw_http_state_t *st) {
  mw_conn_t *c = st->conn;
  if (st->advancing) return; /* the loop below, further up, goes on */
  st->advancing = 1;
  while (st->head && !c->closing && c->mode == MW_CONN_HTTP) {
    mw_http_request_t *r = st->head;
    if (r->answered) {
      if (!write_answer(st, r, r->held_status, r->held, r->held + r->held_extra,
                        r->held + r->held_body, r->held_len)) {
        mw__conn_close(c);
        break;
      }
    } else if (!r->dispatched) {
      dispatch(r);
    } else {
      break;
    }
  }
  st->advancing = 0;
}

/* A parse error or a limit: answered (and the connection closed) after the
 * requests before it. */
static void fail_parse(mw_http_state_t *st, llhttp_errno_t err) {
  int status = st->error_status ? st->error_status : 400;
  switch (status) {
  case 413:
    mw__metric_add(m_rej_413, 1);
    break;
  case 414:
    mw__metric_add(m_rej_414, 1);
    break;
  case 431:
    mw__metric_add(m_rej_431, 1);
    break;
  default:
    mw__metric_add(m_rej_400, 1);
    break;
  }
  mw_log(MW_LOG_DEBUG, "http", "%s: rejected with %d (%s)", st->conn->remote,
         status, status == 400 ? llhttp_errno_name(err) : "limit");
  const char *reason = status == 413   ? "body too large"
                       : status == 414 ? "request line too long"
                       : status == 431 ? "headers too large"
                                       : "malformed request";
  st->ended = 1;
  request_free(st->req);
  st->req = NULL;
  if (!st->head) {
    mw__http_reject(st->conn, status, reason);
    return;
  }
  /* Requests are outstanding: queue an answered stand-in behind them. */
  mw_http_request_t *r = mw_xcalloc(1, sizeof *r);
  r->conn = st->conn;
  r->worker = st->conn->worker;
  r->dispatched = r->answered = 1;
  r->held_status = status;
  static const char ctype[] = "application/json";
  char body[64];
  int n = snprintf(body, sizeof body, "{\"error\":\"%s\"}", reason);
  r->held_extra = sizeof ctype;
  r->held_body = r->held_extra + 1;
  r->held_len = (size_t)n;
  r->held = mw_xmalloc(r->held_body + r->held_len + 1);
  memcpy(r->held, ctype, sizeof ctype);
  r->held[r->held_extra] = 0;
  memcpy(r->held + r->held_body, body, r->held_len + 1);
  enqueue(st, r);
  advance(st);
}

/* Parses data[0..len): queues each complete request and dispatches it (a
 * barrier once it is the head). What cannot be parsed yet goes to
 * st->pending (which is empty on entry). */
static void parse(mw_http_state_t *st, const char *data, size_t len) {
  mw_conn_t *c = st->conn;
  while (len && !c->closing && c->mode == MW_CONN_HTTP && !must_wait(st)) {
    llhttp_errno_t err = llhttp_execute(&st->parser, data, len);
    if (err == HPE_OK) return; /* all consumed, a request may be partial */
    if (err != HPE_PAUSED && err != HPE_PAUSED_UPGRADE) {
      fail_parse(st, err);
      return;
    }
    const char *pos = llhttp_get_error_pos(&st->parser);
    size_t used = pos ? (size_t)(pos - data) : len;
    data += used;
    len -= used;
    mw_http_request_t *r = st->req;
    if (!r || !r->complete) {
      fail_parse(st, err);
      return;
    }
    st->req = NULL;
    r->cost = sizeof *r + r->url_len + st->header_bytes + r->body_len;
    if (r->upgrade || !r->keep_alive)
      st->ended = 1; /* the parser stays paused for good */
    else
      llhttp_resume(&st->parser);
    classify(r);
    enqueue(st, r);
    if (r->barrier) {
      /* Its bytes wait: the new owner gets them if it takes over. */
      if (len) append(&st->pending, &st->pending_len, data, len);
      advance(st);
      return;
    }
    dispatch(r); /* may answer, close, or leave it for later */
  }
  if (len && !c->closing) append(&st->pending, &st->pending_len, data, len);
}

/* After take-over: the bytes that followed the request go to the handler. */
static void hand_over(mw_conn_t *c, mw_http_state_t *st) {
  st->in_process = 1; /* the HTTP side is finished for good */
  char *rest = st->pending;
  size_t n = st->pending_len;
  st->pending = NULL;
  st->pending_len = 0;
  mw__conn_read_start(c);
  if (n) c->handler->on_data(c->ud, rest, n);
  free(rest);
}

/* Parses `data` (or, if NULL, the pending bytes) as long as the bounds
 * allow, then reads on or stops reading. */
static void process(mw_conn_t *c, const char *data, size_t len) {
  mw_http_state_t *st = c->http;
  st->in_process = 1;
  for (;;) {
    char *own = NULL;
    if (!data) {
      own = st->pending;
      data = own;
      len = st->pending_len;
      st->pending = NULL;
      st->pending_len = 0;
    }
    parse(st, data, len);
    free(own);
    data = NULL;
    if (c->mode == MW_CONN_STREAM) {
      hand_over(c, st); /* st stays allocated until close, inert */
      return;
    }
    if (c->closing || !st->pending_len || must_wait(st)) break;
  }
  st->in_process = 0;
  if (c->closing) return;
  /* Bytes waiting: stop reading (TCP pushes back). Otherwise read on, also
   * while parsing waits, so that a peer that leaves is noticed (an abort
   * callback runs); the next bytes then wait in `pending`. */
  if (st->pending_len)
    mw__conn_read_stop(c);
  else
    mw__conn_read_start(c);
}

void mw__http_on_drained(mw_conn_t *c) {
  mw_http_state_t *st = c->http;
  if (!st || c->mode != MW_CONN_HTTP || c->closing || st->in_process ||
      st->advancing || !st->pending_len || must_wait(st))
    return;
  process(c, NULL, 0);
}

void mw__http_on_data(mw_conn_t *c, const char *data, size_t len) {
  mw_http_state_t *st = c->http;
  if (c->mode != MW_CONN_HTTP) {
    if (len) c->handler->on_data(c->ud, data, len);
    return;
  }
  if (st->in_process || st->pending_len || must_wait(st)) {
    /* Parsing waits: keep the bytes (bounded), stop reading. */
    if (st->pending_len + len > st->max_ahead + 65536) {
      mw__metric_add(m_rej_400, 1);
      mw__conn_close(c);
      return;
    }
    append(&st->pending, &st->pending_len, data, len);
    if (st->in_process || must_wait(st)) {
      mw__conn_read_stop(c);
      return;
    }
    process(c, NULL, 0);
    return;
  }
  process(c, data, len); /* parsed straight from the read buffer */
}

/* --- answers ------------------------------------------------------------ */

/* Keeps r's answer until the requests ahead of it are written. */
static void hold(mw_http_state_t *st, mw_http_request_t *r, int status,
                 const char *ctype, const char *extra, const char *body,
                 size_t len) {
  if (!ctype) ctype = "text/plain";
  if (!extra) extra = "";
  size_t cl = strlen(ctype), el = strlen(extra);
  size_t bl = strcmp(r->method, "HEAD") == 0 ? 0 : len;
  size_t size = cl + 1 + el + 1 + bl;
  r->held = mw_xmalloc(size + 1);
  memcpy(r->held, ctype, cl + 1);
  memcpy(r->held + cl + 1, extra, el + 1);
  if (bl) memcpy(r->held + cl + 1 + el + 1, body, bl);
  r->held[size] = 0;
  r->held_status = status;
  r->held_extra = cl + 1;
  r->held_body = cl + 1 + el + 1;
  r->held_len = len;
  r->answered = 1;
  /* The request's own bytes are no longer needed. */
  free(r->body);
  r->body = NULL;
  r->body_len = 0;
  r->cost += size;
  st->out_bytes += size;
}

/* What follows the head's answer: held answers, a waiting barrier, parsing
 * the pending bytes, reading on. */
static void after_answer(mw_conn_t *c, mw_http_state_t *st) {
  advance(st);
  if (c->closing || c->mode != MW_CONN_HTTP || st->in_process) return;
  if (!st->pending_len)
    mw__conn_read_start(c);
  else if (!must_wait(st))
    process(c, NULL, 0);
}

void mw__http_respond(mw_http_request_t *r, int status,
                      const char *content_type, const char *extra_headers,
                      const char *body, size_t len) {
  mw_conn_t *c = r->conn;
  if (!c || !c->http) {
    /* The peer left: nobody to answer. */
    if (r->orphaning)
      r->answered = 1; /* freed by mw__http_on_close's loop */
    else
      request_free(r);
    return;
  }
  mw_http_state_t *st = c->http;
  if (r->answered) return; /* a second answer: the handler's mistake */
  if (r != st->head) {
    hold(st, r, status, content_type, extra_headers, body, len);
    return;
  }
  if (!write_answer(st, r, status, content_type, extra_headers, body, len)) {
    mw__conn_close(c);
    return;
  }
  after_answer(c, st);
}

void mw__http_respond_json(mw_http_request_t *req, int status,
                           const char *json) {
  mw__http_respond(req, status, "application/json", NULL, json, strlen(json));
}

void mw__http_on_abort(mw_http_request_t *req, mw_abort_fn fn, void *ud) {
  req->abort_fn = fn;
  req->abort_ud = ud;
}

mw_conn_t *mw__http_take(mw_http_request_t *r, const char *head,
                         size_t head_len, const mw_stream_handler_t *h,
                         void *ud) {
  mw_conn_t *c = r->conn;
  if (!c || !c->http) {
    /* Orphaned (see mw__http_respond). */
    if (r->orphaning)
      r->answered = 1;
    else
      request_free(r);
    return NULL;
  }
  mw_http_state_t *st = c->http;
  if (c->closing || r != st->head || r->next || r->answered) {
    /* Only the sole outstanding request may take the connection (barriers
     * are dispatched that way); anything else is a handler's mistake. */
    if (!c->closing)
      mw_log(MW_LOG_ERROR, "http",
             "%s: %s %s tried to take a connection "
             "with other requests outstanding",
             c->remote, r->method, r->path);
    mw__http_respond_json(r, 500, "{\"error\":\"cannot take over\"}");
    return NULL;
  }
  dequeue_head(st);
  request_free(r);
  mw__conn_write(c, head, head_len, 1);
  mw__conn_take(c, h, ud);
  if (!st->in_process) hand_over(c, st);
  return c;
}

/* --- accessors ---------------------------------------------------------- */

const char *mw__http_method(const mw_http_request_t *r) {
  return r->method;
}

const char *mw__http_path(const mw_http_request_t *r) {
  return r->path;
}

const char *mw__http_header(const mw_http_request_t *r, const char *lname) {
  for (size_t i = 0; i < r->nheaders; i++)
    if (strcmp(r->headers[i].name, lname) == 0) return r->headers[i].value;
  return NULL;
}

int mw__http_header_at(const mw_http_request_t *r, size_t i, const char **name,
                       const char **value) {
  if (i >= r->nheaders) return 0;
  *name = r->headers[i].name;
  *value = r->headers[i].value;
  return 1;
}

static int hexval(int ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

/* Percent-decodes s[0..n) into a new string ('+' is a space). */
static char *url_decode(const char *s, size_t n) {
  char *out = mw_xmalloc(n + 1), *o = out;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 &&
        hexval(s[i + 2]) >= 0) {
      *o++ = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
      i += 2;
    } else if (s[i] == '+') {
      *o++ = ' ';
    } else {
      *o++ = s[i];
    }
  }
  *o = 0;
  return out;
}

static void parse_query(mw_http_request_t *r) {
  r->query_parsed = 1;
  const char *q = r->url ? memchr(r->url, '?', r->url_len) : NULL;
  if (!q) return;
  const char *p = q + 1, *end = r->url + r->url_len;
  while (p < end && r->nquery < MW_MAX_QUERY_PARAMS) {
    const char *amp = memchr(p, '&', (size_t)(end - p));
    const char *stop = amp ? amp : end;
    const char *eq = memchr(p, '=', (size_t)(stop - p));
    if (stop > p) {
      r->query = mw_xrealloc(r->query, (r->nquery + 1) * sizeof *r->query);
      kv_t *kv = &r->query[r->nquery++];
      kv->name = url_decode(p, (size_t)((eq ? eq : stop) - p));
      kv->value =
          eq ? url_decode(eq + 1, (size_t)(stop - eq - 1)) : mw_xstrdup("");
    }
    p = stop + 1;
  }
}

const char *mw__http_query(const mw_http_request_t *r, const char *name) {
  if (!r->query_parsed) parse_query((mw_http_request_t *)r);
  for (size_t i = 0; i < r->nquery; i++)
    if (strcmp(r->query[i].name, name) == 0) return r->query[i].value;
  return NULL;
}

int mw__http_query_at(const mw_http_request_t *r, size_t i, const char **name,
                      const char **value) {
  if (!r->query_parsed) parse_query((mw_http_request_t *)r);
  if (i >= r->nquery) return 0;
  *name = r->query[i].name;
  *value = r->query[i].value;
  return 1;
}

const char *mw__http_remote_addr(const mw_http_request_t *r) {
  return r->conn ? r->conn->remote : "";
}

mw_worker_t *mw__http_worker(const mw_http_request_t *r) {
  return r->worker;
}

mw_bytes_t mw__http_body(const mw_http_request_t *r) {
  mw_bytes_t b = {r->body ? r->body : "", r->body_len};
  return b;
}
