/* Pure helpers of the Redis storage: see redis_proto.h. */
#include "redis_proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moonwire/errno.h"

static int fail(char *err, size_t errlen, const char *msg) {
  if (err && errlen) snprintf(err, errlen, "%s", msg);
  return MW_EINVAL;
}

/* Decodes %XX escapes of a URL part into out (at most cap-1 bytes). */
static int pct_decode(const char *s, size_t n, char *out, size_t cap) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (c == '%') {
      unsigned v;
      char hex[3] = {0};
      if (i + 2 >= n) return -1;
      hex[0] = s[i + 1];
      hex[1] = s[i + 2];
      if (sscanf(hex, "%2x", &v) != 1 || v == 0) return -1;
      c = (char)v;
      i += 2;
    }
    if (o + 1 >= cap) return -1;
    out[o++] = c;
  }
  out[o] = '\0';
  return 0;
}

int rd_url_parse(const char *url, rd_url_t *out, char *err, size_t errlen) {
  static const char scheme[] = "redis://";
  memset(out, 0, sizeof *out);
  out->port = 6379;
  if (!url || strncmp(url, scheme, sizeof scheme - 1) != 0)
    return fail(err, errlen, "the URL must start with redis://");
  const char *p = url + sizeof scheme - 1;
  const char *end = p + strcspn(p, "/?#");
  const char *at = NULL;
  for (const char *q = p; q < end; q++)
    if (*q == '@') at = q; /* the last '@': a password may hold one */
  if (at) {
    const char *colon = memchr(p, ':', (size_t)(at - p));
    if (colon) { /* [user]:password; the user (ACL) is not supported */
      if (colon != p)
        return fail(err, errlen,
                    "a user name in the URL is not supported: use "
                    "redis://:password@host:port/db");
      if (pct_decode(colon + 1, (size_t)(at - colon - 1), out->password,
                     sizeof out->password))
        return fail(err, errlen, "bad password in the URL");
    } else if (at != p) {
      return fail(err, errlen,
                  "credentials must be :password@ (redis://:pass@host:port)");
    }
    p = at + 1;
  }
  const char *hend;
  if (*p == '[') { /* [IPv6]:port */
    const char *rb = memchr(p, ']', (size_t)(end - p));
    if (!rb) return fail(err, errlen, "missing ] in the IPv6 host");
    if ((size_t)(rb - p - 1) >= sizeof out->host || rb == p + 1)
      return fail(err, errlen, "bad host in the URL");
    memcpy(out->host, p + 1, (size_t)(rb - p - 1));
    hend = rb + 1;
    if (hend < end && *hend != ':')
      return fail(err, errlen, "bad host in the URL");
  } else {
    hend = memchr(p, ':', (size_t)(end - p));
    if (!hend) hend = end;
    if (hend == p || (size_t)(hend - p) >= sizeof out->host)
      return fail(err, errlen, "missing or too long host in the URL");
    memcpy(out->host, p, (size_t)(hend - p));
  }
  if (hend < end) { /* :port */
    const char *ps = hend + 1;
    long v = 0;
    if (ps == end) return fail(err, errlen, "empty port in the URL");
    for (const char *q = ps; q < end; q++) {
      if (*q < '0' || *q > '9' || v > 65535)
        return fail(err, errlen, "the port must be 1..65535");
      v = v * 10 + (*q - '0');
    }
    if (v < 1 || v > 65535)
      return fail(err, errlen, "the port must be 1..65535");
    out->port = (int)v;
  }
  if (*end == '/') {
    const char *ds = end + 1;
    long v = 0;
    size_t n = strlen(ds);
    if (n == 0) return 0; /* redis://host/ */
    for (size_t i = 0; i < n; i++) {
      if (ds[i] < '0' || ds[i] > '9' || v > 100000)
        return fail(err, errlen, "the database must be a number (/0 .. /15)");
      v = v * 10 + (ds[i] - '0');
    }
    out->db = (int)v;
  } else if (*end) {
    return fail(err, errlen, "query strings and fragments are not supported");
  }
  return 0;
}

void rd_buf_add(rd_buf_t *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + n + 1)
      cap *= 2;
    char *d = realloc(b->data, cap);
    if (!d) abort(); /* a small internal allocation */
    b->data = d;
    b->cap = cap;
  }
  memcpy(b->data + b->len, s, n);
  b->len += n;
  b->data[b->len] = '\0';
}

void rd_buf_json_str(rd_buf_t *b, const char *s, int quotes) {
  if (quotes) rd_buf_add(b, "\"", 1);
  const char *run = s;
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    const char *esc = NULL;
    char tmp[8];
    switch (c) {
    case '"':
      esc = "\\\"";
      break;
    case '\\':
      esc = "\\\\";
      break;
    case '\b':
      esc = "\\b";
      break;
    case '\f':
      esc = "\\f";
      break;
    case '\n':
      esc = "\\n";
      break;
    case '\r':
      esc = "\\r";
      break;
    case '\t':
      esc = "\\t";
      break;
    default:
      if (c < 0x20) {
        snprintf(tmp, sizeof tmp, "\\u%04X", c);
        esc = tmp;
      }
    }
    if (esc) {
      rd_buf_add(b, run, (size_t)(s - run));
      rd_buf_add(b, esc, strlen(esc));
      run = s + 1;
    }
  }
  rd_buf_add(b, run, (size_t)(s - run));
  if (quotes) rd_buf_add(b, "\"", 1);
}

void rd_envelope_parts(const char *topic, const char *event,
                       const char *data_json, size_t data_len,
                       const char *trace_id, rd_buf_t *p1, rd_buf_t *p2,
                       rd_buf_t *p3) {
  static const char a[] = "{\"type\":\"event\",\"topic\":";
  rd_buf_add(p1, a, sizeof a - 1);
  rd_buf_json_str(p1, topic, 1);
  rd_buf_add(p1, ",\"event\":", 9);
  rd_buf_json_str(p1, event, 1);
  rd_buf_add(p1, ",\"seq\":", 7);
  rd_buf_add(p2, ",\"id\":\"", 7);
  rd_buf_json_str(p2, topic, 0);
  rd_buf_add(p2, ":", 1);
  rd_buf_add(p3, "\",\"data\":", 9);
  rd_buf_add(p3, data_json, data_len);
  if (trace_id) {
    rd_buf_add(p3, ",\"trace_id\":", 12);
    rd_buf_json_str(p3, trace_id, 1);
  }
  rd_buf_add(p3, "}", 1);
}

/* An error reply is the script's failure; anything else unexpected is a
 * reply of the wrong shape. */
static int bad(const redisReply *r, const char **why) {
  *why = r && r->type == REDIS_REPLY_ERROR ? "script_error" : "reply_type";
  return MW_EINVAL;
}

static int epoch_ok(const redisReply *e, char *epoch) {
  if (!e || e->type != REDIS_REPLY_STRING || e->len == 0 ||
      e->len >= RD_EPOCH_MAX)
    return 0;
  for (size_t i = 0; i < e->len; i++)
    if ((unsigned char)e->str[i] <= 0x20 || e->str[i] == 0x7f) return 0;
  memcpy(epoch, e->str, e->len);
  epoch[e->len] = '\0';
  return 1;
}

int rd_check_publish_reply(const redisReply *r, uint64_t *seq, char *epoch,
                           const char **why) {
  if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2)
    return bad(r, why);
  const redisReply *s = r->element[0];
  if (!s || s->type != REDIS_REPLY_INTEGER || s->integer < 1)
    return bad(r, why);
  if (!epoch_ok(r->element[1], epoch)) return bad(r, why);
  *seq = (uint64_t)s->integer;
  return 0;
}

int rd_check_read_reply(const redisReply *r, uint64_t *top, char *epoch,
                        int *complete, redisReply ***items, size_t *nitems,
                        const char **why) {
  if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 4)
    return bad(r, why);
  const redisReply *t = r->element[0], *c = r->element[2], *a = r->element[3];
  if (!t || t->type != REDIS_REPLY_INTEGER || t->integer < 0)
    return bad(r, why);
  if (!epoch_ok(r->element[1], epoch)) return bad(r, why);
  if (!c || c->type != REDIS_REPLY_INTEGER ||
      (c->integer != 0 && c->integer != 1))
    return bad(r, why);
  if (!a || a->type != REDIS_REPLY_ARRAY) return bad(r, why);
  for (size_t i = 0; i < a->elements; i++)
    if (!a->element[i] || a->element[i]->type != REDIS_REPLY_STRING)
      return bad(r, why);
  *top = (uint64_t)t->integer;
  *complete = (int)c->integer;
  *items = a->element;
  *nitems = a->elements;
  return 0;
}

int rd_check_presence_reply(const redisReply *r, const char **why) {
  if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2)
    return bad(r, why);
  const redisReply *ids = r->element[0], *users = r->element[1];
  if (!ids || !users || ids->type != REDIS_REPLY_ARRAY ||
      users->type != REDIS_REPLY_ARRAY || ids->elements != users->elements)
    return bad(r, why);
  for (size_t i = 0; i < ids->elements; i++) {
    const redisReply *id = ids->element[i], *u = users->element[i];
    if (!id || id->type != REDIS_REPLY_STRING || !u ||
        (u->type != REDIS_REPLY_STRING && u->type != REDIS_REPLY_NIL))
      return bad(r, why);
  }
  return 0;
}

int rd_history_item(const char *s, size_t n, const char **json, size_t *len) {
  const char *bar = memchr(s, '|', n);
  if (!bar || bar == s) return MW_EINVAL;
  for (const char *q = s; q < bar; q++)
    if (*q < '0' || *q > '9') return MW_EINVAL;
  *json = bar + 1;
  *len = n - (size_t)(bar + 1 - s);
  return *len ? 0 : MW_EINVAL;
}

int rd_split_message(const char *payload, size_t n, char *epoch,
                     const char **json, size_t *jlen) {
  const char *sp = memchr(payload, ' ', n);
  if (!sp || sp == payload || (size_t)(sp - payload) >= RD_EPOCH_MAX)
    return MW_EINVAL;
  size_t el = (size_t)(sp - payload);
  if (el == 1 && payload[0] == '-') {
    epoch[0] = '\0';
  } else {
    memcpy(epoch, payload, el);
    epoch[el] = '\0';
  }
  *json = sp + 1;
  *jlen = n - el - 1;
  return *jlen ? 0 : MW_EINVAL;
}

uint64_t rd_backoff_next(uint64_t prev_ms, uint64_t min_ms, uint64_t max_ms) {
  if (prev_ms < min_ms) return min_ms;
  return prev_ms >= max_ms / 2 ? max_ms : prev_ms * 2;
}

int rd_order_local(rd_order_t *o, uint64_t seq, const char *epoch) {
  if (!o->seq || seq != o->seq + 1 || !epoch || strcmp(o->epoch, epoch) != 0)
    return 0;
  o->seq = seq;
  return 1;
}

int rd_order_echo(rd_order_t *o, uint64_t seq, const char *epoch) {
  if (!epoch || !*epoch || strlen(epoch) >= RD_EPOCH_MAX) return 1;
  if (o->seq && seq <= o->seq && strcmp(o->epoch, epoch) == 0) return 0;
  o->seq = seq;
  snprintf(o->epoch, sizeof o->epoch, "%s", epoch);
  return 1;
}

int rd_pending_admit(size_t n, size_t bytes, size_t add, size_t max_n,
                     size_t max_bytes) {
  if (max_n && n >= max_n) return 0;
  if (max_bytes && (bytes > max_bytes || add > max_bytes - bytes)) return 0;
  return 1;
}
