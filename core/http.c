/* HTTP/1.1 over a connection with llhttp: see http.h.
 *
 * One request is handled at a time: on_message_complete pauses the parser,
 * bytes after the request wait in `pending` (reading stops), and the answer
 * resumes parsing. Limits: request line (414), headers (431), body (413);
 * anything llhttp rejects is a 400. Each rejection closes the connection and
 * is counted. */
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
  mw_abort_fn abort_fn;
  void *abort_ud;
};

struct mw_http_state {
  llhttp_t parser;
  mw_conn_t *conn;
  mw_http_request_t *req;    /* being received */
  mw_http_request_t *active; /* being handled */
  char *field, *value;
  size_t field_len, value_len;
  int in_value;
  size_t header_bytes;
  char *pending; /* unparsed bytes that arrived while a request was handled */
  size_t pending_len;
  int in_process;
  int error_status;
  size_t max_line, max_headers, max_body;
  uint64_t idle_ms;
};

static mw_metric_t *m_rej_400, *m_rej_413, *m_rej_414, *m_rej_431,
    *m_requests;
static llhttp_settings_t settings;

/* --- small helpers ------------------------------------------------------ */

const char *mw__http_status_text(int status) {
  switch (status) {
  case 101: return "Switching Protocols";
  case 200: return "OK";
  case 204: return "No Content";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 413: return "Payload Too Large";
  case 414: return "URI Too Long";
  case 426: return "Upgrade Required";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 503: return "Service Unavailable";
  default: return "Unknown";
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
  free(r);
}

static mw_http_state_t *state_of(llhttp_t *p) {
  return (mw_http_state_t *)p->data;
}

static int limit_error(mw_http_state_t *st, int status) {
  st->error_status = status;
  return -1;
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
  for (char *c = h->name; *c; c++) *c = (char)tolower((unsigned char)*c);
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
  return HPE_PAUSED; /* one request at a time */
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
  st->max_headers = (size_t)mw__config_int(cfg, "limits.max_header_size", 16384);
  st->max_body = (size_t)mw__config_int(cfg, "limits.max_body_size", 1 << 20);
  st->idle_ms = (uint64_t)mw__config_int(cfg, "limits.idle_timeout", 60) * 1000;
  llhttp_init(&st->parser, HTTP_REQUEST, &settings);
  st->parser.data = st;
  c->http = st;
  mw__conn_idle_timer(c, st->idle_ms);
}

int mw__http_idle(const mw_conn_t *c) {
  return !c->http || !c->http->active;
}

void mw__http_on_close(mw_conn_t *c) {
  mw_http_state_t *st = c->http;
  if (!st) return;
  c->http = NULL;
  mw_http_request_t *a = st->active;
  if (a) {
    a->conn = NULL; /* orphaned: the handler's answer will just free it */
    if (a->abort_fn) {
      a->abort_fn(a, a->abort_ud);
      request_free(a);
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

static void dispatch(mw_http_state_t *st) {
  mw_http_request_t *r = st->req;
  st->req = NULL;
  st->active = r;
  mw__metric_add(m_requests, 1);
  if (strcmp(r->method, "OPTIONS") == 0) { /* CORS preflight, any path */
    mw__cors_preflight(r);
    return;
  }
  int path_known = 0;
  const mw_route_t *route = mw__server_find_route(r->method, r->path,
                                                  &path_known);
  if (!route) {
    if (path_known)
      mw__http_respond_json(r, 405, "{\"error\":\"method not allowed\"}");
    else
      mw__http_respond_json(r, 404, "{\"error\":\"not found\"}");
    return;
  }
  void *wstate = route->plugin ? mw__server_wstate(r->worker, route->plugin)
                               : NULL;
  route->fn(r, wstate);
}

static void fail_parse(mw_http_state_t *st, llhttp_errno_t err) {
  int status = st->error_status ? st->error_status : 400;
  switch (status) {
  case 413: mw__metric_add(m_rej_413, 1); break;
  case 414: mw__metric_add(m_rej_414, 1); break;
  case 431: mw__metric_add(m_rej_431, 1); break;
  default: mw__metric_add(m_rej_400, 1); break;
  }
  mw_log(MW_LOG_DEBUG, "http", "%s: rejected with %d (%s)", st->conn->remote,
         status, status == 400 ? llhttp_errno_name(err) : "limit");
  const char *reason = status == 413   ? "body too large"
                       : status == 414 ? "request line too long"
                       : status == 431 ? "headers too large"
                                       : "malformed request";
  mw__http_reject(st->conn, status, reason);
}

/* Parses `data`; keeps what follows a complete request in st->pending. */
static void feed(mw_http_state_t *st, const char *data, size_t len) {
  llhttp_errno_t err = llhttp_execute(&st->parser, data, len);
  if (err == HPE_OK) return;
  if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
    const char *pos = llhttp_get_error_pos(&st->parser);
    size_t used = pos ? (size_t)(pos - data) : len;
    if (used < len) append(&st->pending, &st->pending_len, data + used,
                           len - used);
    if (!st->req || !st->req->complete) {
      fail_parse(st, err);
      return;
    }
    dispatch(st);
    return;
  }
  fail_parse(st, err);
}

/* Handles pending bytes while no request is active. */
static void process(mw_conn_t *c) {
  mw_http_state_t *st = c->http;
  if (!st || st->in_process) return;
  st->in_process = 1;
  while (c->http == st && !c->closing && !st->active) {
    if (c->mode == MW_CONN_STREAM) {
      /* Taken over: hand the bytes after the request to the handler. */
      char *rest = st->pending;
      size_t n = st->pending_len;
      st->pending = NULL;
      st->pending_len = 0;
      mw__conn_read_start(c);
      if (n) c->handler->on_data(c->ud, rest, n);
      free(rest);
      return; /* st stays allocated until close; in_process keeps it inert */
    }
    if (!st->pending_len) {
      mw__conn_read_start(c);
      break;
    }
    char *buf = st->pending;
    size_t n = st->pending_len;
    st->pending = NULL;
    st->pending_len = 0;
    feed(st, buf, n);
    free(buf);
  }
  if (c->http == st) st->in_process = 0;
}

void mw__http_on_data(mw_conn_t *c, const char *data, size_t len) {
  mw_http_state_t *st = c->http;
  if (st->active || st->in_process) {
    /* A request is being handled: keep the bytes, stop reading. */
    if (st->pending_len + len > st->max_body + st->max_headers + st->max_line) {
      mw__metric_add(m_rej_400, 1);
      mw__conn_close(c);
      return;
    }
    append(&st->pending, &st->pending_len, data, len);
    mw__conn_read_stop(c);
    return;
  }
  append(&st->pending, &st->pending_len, data, len);
  process(c);
}

/* --- answers ------------------------------------------------------------ */

void mw__http_respond(mw_http_request_t *r, int status,
                      const char *content_type, const char *extra_headers,
                      const char *body, size_t len) {
  mw_conn_t *c = r->conn;
  if (!c || !c->http || c->http->active != r) {
    request_free(r); /* the peer left: nobody to answer */
    return;
  }
  mw_http_state_t *st = c->http;
  int keep = r->keep_alive && !c->worker->draining;
  write_response(c, status, content_type, extra_headers, body, len, keep,
                 strcmp(r->method, "HEAD") == 0);
  st->active = NULL;
  request_free(r);
  if (!keep) {
    mw__conn_close(c);
    return;
  }
  llhttp_resume(&st->parser);
  mw__conn_idle_timer(c, st->idle_ms);
  if (!st->in_process) process(c);
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
  if (!c || !c->http || c->http->active != r || c->closing) {
    request_free(r);
    return NULL;
  }
  mw_http_state_t *st = c->http;
  st->active = NULL;
  request_free(r);
  mw__conn_write(c, head, head_len, 1);
  mw__conn_take(c, h, ud);
  if (!st->in_process) {
    st->in_process = 1; /* the HTTP side is finished for good */
    char *rest = st->pending;
    size_t n = st->pending_len;
    st->pending = NULL;
    st->pending_len = 0;
    mw__conn_read_start(c);
    if (n) h->on_data(ud, rest, n);
    free(rest);
  }
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
    if (s[i] == '%' && i + 2 < n &&
        hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
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
      kv->value = eq ? url_decode(eq + 1, (size_t)(stop - eq - 1))
                     : mw_xstrdup("");
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
