/* Topics, cursor positions and cursors shared by /sse and /poll: see
 * topic_params.h. */
#include "topic_params.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "cursor.h"

static int tp_name_ok(const char *s, size_t len) {
  if (len == 0 || len > TP_MAX_TOPIC_LEN) return 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch <= 0x20 || ch == 0x7f || ch == ',') return 0;
  }
  return mw_codec_utf8_valid(s, len);
}

int tp_find(const tp_list_t *l, const char *name) {
  for (size_t i = 0; i < l->n; i++)
    if (strcmp(l->t[i].name, name) == 0) return (int)i;
  return -1;
}

void tp_free(tp_list_t *l) {
  for (size_t i = 0; i < l->n; i++)
    free(l->t[i].name);
  free(l->t);
  l->t = NULL;
  l->n = 0;
}

/* Appends `name` (len bytes) unless present; 0, or -1 when out of memory. */
static int tp_add(tp_list_t *l, const char *name, size_t len) {
  for (size_t i = 0; i < l->n; i++)
    if (strlen(l->t[i].name) == len && !memcmp(l->t[i].name, name, len))
      return 0; /* duplicates are ignored */
  char *copy = malloc(len + 1);
  if (!copy) return -1;
  memcpy(copy, name, len);
  copy[len] = 0;
  memset(&l->t[l->n], 0, sizeof l->t[0]);
  l->t[l->n++].name = copy;
  return 0;
}

static void tp_err(char *err, size_t len, const char *msg) {
  snprintf(err, len, "%s", msg);
}

int tp_parse(const char *topics, const char *cursor, tp_list_t *out, char *err,
             size_t err_len) {
  json_t *pos = NULL;
  out->t = NULL;
  out->n = 0;
  if (cursor && *cursor) {
    pos = mw_cursor_decode(cursor);
    if (!pos) {
      tp_err(err, err_len, "malformed cursor");
      return -1;
    }
  }
  if (!topics && !pos) {
    tp_err(err, err_len, "missing topics");
    return -1;
  }
  out->t = calloc(TP_MAX_TOPICS, sizeof *out->t);
  if (!out->t) goto oom;
  if (topics) {
    if (!*topics) {
      tp_err(err, err_len, "empty topics list");
      goto fail;
    }
    /* Count first: a list of 10,000 topics is refused before any work. */
    size_t count = 1;
    for (const char *p = topics; *p; p++)
      if (*p == ',') count++;
    if (count > TP_MAX_TOPICS * 4) { /* far beyond even with duplicates */
      tp_err(err, err_len, "too many topics (at most 256)");
      goto fail;
    }
    const char *p = topics;
    for (;;) {
      const char *end = strchr(p, ',');
      size_t len = end ? (size_t)(end - p) : strlen(p);
      if (len == 0) {
        tp_err(err, err_len, "empty topic name in the topics list");
        goto fail;
      }
      if (!tp_name_ok(p, len)) {
        tp_err(err, err_len,
               "invalid topic name (1-256 bytes of UTF-8 without spaces, "
               "control characters or commas)");
        goto fail;
      }
      int known = 0;
      for (size_t i = 0; i < out->n && !known; i++)
        known =
            strlen(out->t[i].name) == len && !memcmp(out->t[i].name, p, len);
      if (!known && out->n == TP_MAX_TOPICS) {
        tp_err(err, err_len, "too many topics (at most 256)");
        goto fail;
      }
      if (tp_add(out, p, len)) goto oom;
      if (!end) break;
      p = end + 1;
    }
  } else {
    const char *k;
    json_t *v;
    json_object_foreach(pos, k, v) { /* at most 256: the decoder checked */
      if (tp_add(out, k, strlen(k))) goto oom;
    }
  }
  if (out->n == 0) {
    tp_err(err, err_len, "missing topics");
    goto fail;
  }
  if (pos) {
    for (size_t i = 0; i < out->n; i++) {
      json_t *v = json_object_get(pos, out->t[i].name);
      if (!v) continue; /* not in the cursor: live from now */
      tp_topic_t *t = &out->t[i];
      t->from_cursor = 1;
      t->has_base = 1;
      t->base_seq = (uint64_t)json_integer_value(json_array_get(v, 0));
      snprintf(t->base_epoch, sizeof t->base_epoch, "%s",
               json_string_value(json_array_get(v, 1)));
    }
    json_decref(pos);
  }
  /* Room was made for the most topics a request may name: keep n. */
  tp_topic_t *fit = realloc(out->t, out->n * sizeof *out->t);
  if (fit) out->t = fit;
  return 0;
oom:
  tp_err(err, err_len, "out of memory");
fail:
  json_decref(pos);
  tp_free(out);
  return -1;
}

void tp_set_base(tp_topic_t *t, uint64_t seq, const char *epoch) {
  t->has_base = 1;
  t->base_seq = seq;
  snprintf(t->base_epoch, sizeof t->base_epoch, "%s", epoch ? epoch : "");
}

void tp_recovered(tp_topic_t *t, int status, int recovered, uint64_t seq,
                  const char *epoch) {
  if (status == MW_ECANCELED) return;
  if (status != 0) {
    t->failed = 1; /* e.g. storage unavailable: retry later, same position */
    return;
  }
  if (recovered) {
    tp_set_base(t, t->base_seq, epoch);
  } else {
    tp_set_base(t, seq, epoch); /* refetch, then continue from now */
    t->unrecovered = 1;
  }
}

int tp_position(const mw_host_v1_t *host, const mw_client_t *client,
                const tp_topic_t *t, uint64_t *seq, const char **epoch) {
  if (t->pinned) {
    *seq = t->pin_seq;
    *epoch = t->pin_epoch;
    return 1;
  }
  const char *cep = NULL;
  uint64_t cseq = client ? host->client_position(client, t->name, &cep) : 0;
  if (cep && cseq > 0 &&
      (!t->has_base || strcmp(cep, t->base_epoch) != 0 || cseq > t->base_seq)) {
    *seq = cseq;
    *epoch = cep;
    return 1;
  }
  if (t->has_base) {
    *seq = t->base_seq;
    *epoch = t->base_epoch;
    return 1;
  }
  if (cep) {
    *seq = cseq;
    *epoch = cep;
    return 1;
  }
  return 0;
}

char *tp_cursor(const mw_host_v1_t *host, const mw_client_t *client,
                const tp_list_t *l) {
  json_t *o = json_object();
  if (!o) return NULL;
  for (size_t i = 0; i < l->n; i++) {
    uint64_t seq;
    const char *epoch;
    if (l->t[i].refused) continue;
    if (!tp_position(host, client, &l->t[i], &seq, &epoch)) continue;
    json_object_set_new(o, l->t[i].name,
                        json_pack("[Is]", (json_int_t)seq, epoch));
  }
  char *c = json_object_size(o) ? mw_cursor_encode(o) : NULL;
  json_decref(o);
  return c;
}

char *tp_error_json(const char *reason) {
  json_t *o = json_pack("{s:s}", "error", reason ? reason : "");
  char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
  json_decref(o);
  return s ? s : strdup("{\"error\":\"\"}");
}
