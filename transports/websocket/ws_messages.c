/* Client messages of SPEC §3 over WebSocket: subscribe, unsubscribe,
 * publish, ping (presence and auth come later). Each request is answered by
 * an ack or an error carrying its "id"; a bad message never closes the
 * connection.
 *
 * host->publish and host->topic_position may answer synchronously, later, or
 * after the session closed: each pending call holds a session reference and
 * replies only while the session is still open. */
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "ws_internal.h"

static json_t *ws_reply_new(const char *type, json_t *id) {
  json_t *r = json_object();
  json_object_set_new(r, "type", json_string(type));
  if (id) json_object_set(r, "id", id);
  return r;
}

void ws_reply_error(ws_session_t *s, json_t *id, int code, const char *reason) {
  json_t *r = ws_reply_new("error", id);
  json_object_set_new(r, "code", json_integer(code));
  json_t *rs = reason ? json_string(reason) : NULL;
  json_object_set_new(r, "reason", rs ? rs : json_string("error"));
  ws_session_send(s, r);
}

static void ws_reply_ack(ws_session_t *s, json_t *id, json_t *data) {
  json_t *r = ws_reply_new("ack", id);
  json_object_set_new(r, "data", data);
  ws_session_send(s, r);
}

/* An error reply for a bad message, counted under `slot`. */
static void ws_bad(ws_session_t *s, json_t *id, ws_err_slot_t slot,
                   const char *reason) {
  s->host->metric_add(s->p->m_errors[slot], 1);
  ws_reply_error(s, id, 400, reason);
}

/* The HTTP-like code of a host error. */
static int ws_error_code(int rc) {
  switch (rc) {
  case MW_EINVAL:
    return 400;
  case MW_EDENIED:
    return 403;
  case MW_ENOTFOUND:
    return 404;
  case MW_ETOOBIG:
    return 413;
  case MW_ELIMIT:
    return 429;
  case MW_EUNAVAIL:
  case MW_ECANCELED:
    return 503;
  default:
    return 500;
  }
}

/* 1 if `topics` is a non-empty array of strings of 1..256 bytes. */
static int ws_topics_valid(const json_t *topics) {
  if (!json_is_array(topics) || json_array_size(topics) == 0) return 0;
  size_t i;
  json_t *t;
  json_array_foreach(topics, i, t) {
    if (!json_is_string(t)) return 0;
    size_t n = json_string_length(t);
    if (n == 0 || n > WS_MAX_TOPIC_LEN) return 0;
    if (strlen(json_string_value(t)) != n) return 0; /* embedded NUL */
  }
  return 1;
}

/* --- subscribe ------------------------------------------------------------ */

typedef struct ws_sub_req ws_sub_req_t;

typedef struct ws_sub_slot {
  ws_sub_req_t *req;
  size_t index;
} ws_sub_slot_t;

struct ws_sub_req {
  ws_session_t *s;       /* holds a reference */
  json_t *id;            /* reference or NULL */
  json_t *topics;        /* reference: the request's array */
  json_t *since;         /* reference or NULL */
  json_t *result;        /* {"<topic>": {"seq","epoch","recovered"}} */
  unsigned char *added;  /* per topic: subscribed by this request */
  size_t pending;        /* answers still due, plus one while issuing */
  int status;            /* first error */
  int err_code;          /* its reply code */
  char err[160];         /* its reply reason */
  ws_sub_slot_t slots[]; /* one per topic */
};

/* Unsubscribes what this request added (on a failed subscribe). */
static void ws_sub_rollback(ws_session_t *s, const json_t *topics,
                            const unsigned char *added, size_t upto) {
  if (!s->client) return;
  for (size_t i = 0; i < upto; i++)
    if (added[i])
      s->host->unsubscribe(s->client,
                           json_string_value(json_array_get(topics, i)));
}

static void ws_sub_fail(ws_sub_req_t *req, int rc, int code,
                        const char *reason) {
  if (req->status) return;
  req->status = rc;
  req->err_code = code;
  snprintf(req->err, sizeof req->err, "%s", reason);
}

static void ws_sub_finish(ws_sub_req_t *req) {
  ws_session_t *s = req->s;
  if (ws_session_open_for_replies(s)) {
    if (req->status) {
      ws_sub_rollback(s, req->topics, req->added, json_array_size(req->topics));
      ws_reply_error(s, req->id, req->err_code, req->err);
    } else {
      json_t *data = json_object();
      json_object_set(data, "topics", req->result);
      ws_reply_ack(s, req->id, data);
    }
  }
  json_decref(req->id);
  json_decref(req->topics);
  json_decref(req->since);
  json_decref(req->result);
  free(req->added);
  free(req);
  ws_session_unref(s);
}

static void ws_sub_done(ws_sub_req_t *req) {
  if (--req->pending == 0) ws_sub_finish(req);
}

static void ws_sub_result(ws_sub_req_t *req, size_t index, uint64_t seq,
                          const char *epoch, int recovered) {
  const char *topic = json_string_value(json_array_get(req->topics, index));
  json_t *pos = json_object();
  json_object_set_new(pos, "seq", json_integer((json_int_t)seq));
  json_object_set_new(pos, "epoch", json_string(epoch ? epoch : ""));
  json_object_set_new(pos, "recovered", json_boolean(recovered));
  json_object_set_new(req->result, topic, pos);
}

/* A topic without "since": nothing to recover, report its position. */
static void ws_sub_position_cb(int status, uint64_t seq, const char *epoch,
                               void *ud) {
  ws_sub_slot_t *slot = ud;
  ws_sub_req_t *req = slot->req;
  if (status != 0)
    ws_sub_fail(req, status, ws_error_code(status),
                req->s->host->strerror(status));
  else
    ws_sub_result(req, slot->index, seq, epoch, 1);
  ws_sub_done(req);
}

/* A topic with "since": the core replays what was missed right after. */
static void ws_sub_recover_cb(int status, const char *topic, int recovered,
                              uint64_t seq, const char *epoch, void *ud) {
  ws_sub_slot_t *slot = ud;
  ws_sub_req_t *req = slot->req;
  if (status != 0 && status != MW_EUNAVAIL && status != MW_ECANCELED)
    ws_sub_fail(req, status, ws_error_code(status),
                req->s->host->strerror(status));
  else
    ws_sub_result(req, slot->index, seq, epoch, status == 0 && recovered);
  ws_sub_done(req);
}

/* Reads since[topic]: a seq (no epoch check) or {"seq":N,"epoch":"e"}.
 * Returns 1 if given. */
static int ws_since_of(const json_t *since, const char *topic, uint64_t *seq,
                       const char **epoch) {
  json_t *v = since ? json_object_get(since, topic) : NULL;
  if (!v) return 0;
  *epoch = NULL;
  if (json_is_integer(v)) {
    *seq = (uint64_t)json_integer_value(v);
    return 1;
  }
  *seq = (uint64_t)json_integer_value(json_object_get(v, "seq"));
  *epoch = json_string_value(json_object_get(v, "epoch"));
  return 1;
}

static int ws_since_valid(const json_t *v) {
  if (json_is_integer(v)) return json_integer_value(v) >= 0;
  if (!json_is_object(v)) return 0;
  json_t *seq = json_object_get(v, "seq"), *ep = json_object_get(v, "epoch");
  return json_is_integer(seq) && json_integer_value(seq) >= 0 &&
         (!ep || json_is_string(ep));
}

static void ws_msg_subscribe(ws_session_t *s, json_t *msg, json_t *id) {
  json_t *topics = json_object_get(msg, "topics");
  if (!ws_topics_valid(topics)) {
    ws_bad(s, id, WS_ERR_INVALID,
           "topics must be a non-empty array of strings of 1..256 bytes");
    return;
  }
  json_t *since = json_object_get(msg, "since");
  if (since) {
    const char *k;
    json_t *v;
    if (!json_is_object(since)) {
      ws_bad(s, id, WS_ERR_INVALID, "since must be an object");
      return;
    }
    json_object_foreach(since, k, v) {
      if (!ws_since_valid(v)) {
        ws_bad(
            s, id, WS_ERR_INVALID,
            "since values must be a seq >= 0 or {\"seq\":N,\"epoch\":\"..\"}");
        return;
      }
    }
  }
  size_t n = json_array_size(topics);
  ws_sub_req_t *req = calloc(1, sizeof(*req) + n * sizeof(ws_sub_slot_t));
  unsigned char *added = calloc(n, 1);
  if (!req || !added) {
    free(req);
    free(added);
    ws_reply_error(s, id, 500, "out of memory");
    return;
  }
  req->s = s;
  ws_session_ref(s);
  req->id = json_incref(id);
  req->topics = json_incref(topics);
  req->since = json_incref(since);
  req->result = json_object();
  req->added = added;
  req->pending = 1; /* held while issuing */
  for (size_t i = 0; i < n && req->status == 0; i++) {
    const char *topic = json_string_value(json_array_get(topics, i));
    req->slots[i].req = req;
    req->slots[i].index = i;
    uint64_t seq = 0;
    const char *epoch = NULL;
    int recover = ws_since_of(since, topic, &seq, &epoch);
    int rc;
    if (recover) {
      req->pending++;
      rc = s->host->subscribe_since(s->client, topic, seq, epoch,
                                    ws_sub_recover_cb, &req->slots[i]);
      if (rc) req->pending--; /* the callback never fires */
    } else {
      rc = s->host->subscribe(s->client, topic);
    }
    if (rc == 0) {
      added[i] = 1;
    } else if (rc == MW_ELIMIT) {
      ws_sub_fail(req, rc, 429, "too many topics per connection");
    } else if (rc == MW_EDENIED) {
      int code = 403;
      const char *why = s->host->client_error(s->client, &code);
      ws_sub_fail(req, rc, code ? code : 403, why && *why ? why : "forbidden");
    } else if (rc == MW_EINVAL) {
      ws_sub_fail(req, rc, 400, "invalid topic name");
    } else if (rc != MW_EEXIST) {
      ws_sub_fail(req, rc, ws_error_code(rc), s->host->strerror(rc));
    }
    if (rc == 0 && recover) continue; /* the recovery reports the position */
    if (rc != 0 && rc != MW_EEXIST) break;
    req->pending++;
    rc = s->host->topic_position(s->w, topic, ws_sub_position_cb,
                                 &req->slots[i]);
    if (rc != 0) { /* the callback never fires */
      req->pending--;
      ws_sub_fail(req, rc, ws_error_code(rc), s->host->strerror(rc));
    }
  }
  ws_sub_done(req);
}

/* --- unsubscribe -----------------------------------------------------------
 */

static void ws_msg_unsubscribe(ws_session_t *s, json_t *msg, json_t *id) {
  json_t *topics = json_object_get(msg, "topics");
  if (!ws_topics_valid(topics)) {
    ws_bad(s, id, WS_ERR_INVALID,
           "topics must be a non-empty array of strings of 1..256 bytes");
    return;
  }
  size_t i;
  json_t *t;
  json_array_foreach(topics, i, t) {
    s->host->unsubscribe(s->client, json_string_value(t)); /* ENOTFOUND ok */
  }
  ws_reply_ack(s, id, json_object());
}

/* --- publish ---------------------------------------------------------------
 */

typedef struct ws_pub_req {
  ws_session_t *s; /* holds a reference */
  json_t *id;      /* reference or NULL */
} ws_pub_req_t;

static void ws_pub_cb(int status, const mw_event_t *ev, const char *reason,
                      void *ud) {
  ws_pub_req_t *req = ud;
  ws_session_t *s = req->s;
  if (ws_session_open_for_replies(s)) {
    if (status == 0 && ev) {
      json_t *data = json_object();
      json_object_set_new(data, "status", json_string("delivered"));
      json_object_set_new(data, "seq", json_integer((json_int_t)ev->seq));
      ws_reply_ack(s, req->id, data);
    } else {
      if (status == 0) status = MW_EINVAL; /* no event: should not happen */
      ws_reply_error(s, req->id, ws_error_code(status),
                     reason ? reason : s->host->strerror(status));
    }
  }
  json_decref(req->id);
  free(req);
  ws_session_unref(s);
}

static void ws_msg_publish(ws_session_t *s, json_t *msg, json_t *id) {
  json_t *topic = json_object_get(msg, "topic");
  json_t *event = json_object_get(msg, "event");
  json_t *data = json_object_get(msg, "data");
  json_t *trace = json_object_get(msg, "trace_id");
  if (!json_is_string(topic) || json_string_length(topic) == 0 ||
      json_string_length(topic) > WS_MAX_TOPIC_LEN) {
    ws_bad(s, id, WS_ERR_INVALID, "topic must be a string of 1..256 bytes");
    return;
  }
  if (!json_is_string(event) || json_string_length(event) == 0) {
    ws_bad(s, id, WS_ERR_INVALID, "event must be a non-empty string");
    return;
  }
  if (data && !json_is_object(data)) {
    ws_bad(s, id, WS_ERR_INVALID, "data must be an object");
    return;
  }
  if (trace && !json_is_string(trace)) {
    ws_bad(s, id, WS_ERR_INVALID, "trace_id must be a string");
    return;
  }
  char *data_json = data ? json_dumps(data, JSON_COMPACT) : NULL;
  if (data && !data_json) {
    ws_reply_error(s, id, 500, "cannot encode data");
    return;
  }
  ws_pub_req_t *req = calloc(1, sizeof(*req));
  if (!req) {
    free(data_json);
    ws_reply_error(s, id, 500, "out of memory");
    return;
  }
  req->s = s;
  req->id = json_incref(id);
  ws_session_ref(s);
  mw_publish_req_t preq = {
      .topic = json_string_value(topic),
      .event = json_string_value(event),
      .data_json = data_json,
      .data_len = data_json ? strlen(data_json) : 0,
      .trace_id = trace ? json_string_value(trace) : NULL,
  };
  int rc = s->host->publish(s->w, &preq, s->client, ws_pub_cb, req);
  free(data_json);
  if (rc != 0) { /* the callback never fires */
    ws_reply_error(s, id, ws_error_code(rc), s->host->strerror(rc));
    json_decref(req->id);
    free(req);
    ws_session_unref(s);
  }
}

/* --- presence ------------------------------------------------------------ */

typedef struct ws_presence_req {
  ws_session_t *s; /* holds a reference */
  json_t *id;
} ws_presence_req_t;

static void ws_presence_cb(int status, const char *text, void *ud) {
  ws_presence_req_t *req = ud;
  ws_session_t *s = req->s;
  if (ws_session_open_for_replies(s)) {
    json_t *data = status ? NULL : json_loads(text, 0, NULL);
    if (data)
      ws_reply_ack(s, req->id, data);
    else if (status == MW_EDENIED)
      ws_reply_error(s, req->id, 403, "subscribe to the topic first");
    else if (status == MW_ENOTFOUND)
      ws_reply_error(s, req->id, 501, "the storage keeps no presence");
    else
      ws_reply_error(s, req->id, ws_error_code(status ? status : MW_EINVAL),
                     s->host->strerror(status ? status : MW_EINVAL));
  }
  json_decref(req->id);
  free(req);
  ws_session_unref(s);
}

/* {"type":"presence","id":..,"topic":T}: who is subscribed to T (the asking
 * connection must be subscribed to it). */
static void ws_msg_presence(ws_session_t *s, json_t *msg, json_t *id) {
  const char *topic = json_string_value(json_object_get(msg, "topic"));
  if (!topic) {
    ws_bad(s, id, WS_ERR_INVALID, "presence needs a topic string");
    return;
  }
  ws_presence_req_t *req = calloc(1, sizeof *req);
  if (!req) {
    ws_reply_error(s, id, 500, "out of memory");
    return;
  }
  req->s = s;
  req->id = json_incref(id);
  ws_session_ref(s);
  int rc = s->host->presence(s->w, s->client, topic, ws_presence_cb, req);
  if (rc) ws_presence_cb(rc, NULL, req); /* the callback never fires */
}

/* --- first message: auth ------------------------------------------------ */

/* The client is not connected yet: {"type":"auth","token":...} (or, for any
 * other first message, no token) goes to the policy's on_connect. Returns 1
 * when `msg` should now be handled as usual, 0 when it was answered here or
 * the connection is closing (refused: close 1008 with the reason). */
static int ws_msg_first(ws_session_t *s, json_t *msg, json_t *id,
                        const char *type) {
  int is_auth = !strcmp(type, "auth");
  json_t *tok = json_object_get(msg, "token");
  if (is_auth && !json_is_string(tok)) {
    ws_bad(s, id, WS_ERR_INVALID, "auth needs a token string");
    return 0;
  }
  int code = 401;
  int rc = s->host->client_connect(
      s->client, is_auth ? json_string_value(tok) : NULL, &code);
  if (rc) {
    char reason[124];
    snprintf(reason, sizeof reason, "%s",
             s->host->client_error(s->client, NULL));
    ws_session_fail(s, 1008, reason[0] ? reason : "unauthorized");
    return 0;
  }
  s->authed = 1;
  if (!is_auth) return 1;
  json_t *data = json_object();
  const char *user = s->host->client_user_id(s->client);
  const char *tenant = s->host->client_tenant_id(s->client);
  json_object_set_new(data, "client_id",
                      json_string(s->host->client_id(s->client)));
  if (user) json_object_set_new(data, "user_id", json_string(user));
  if (tenant) json_object_set_new(data, "tenant_id", json_string(tenant));
  ws_reply_ack(s, id, data);
  return 0;
}

/* --- dispatch --------------------------------------------------------------
 */

void ws_messages_handle(ws_session_t *s, uint8_t opcode, const uint8_t *data,
                        size_t len) {
  json_t *msg;
  if (s->proto == WS_PROTO_JSON) {
    if (opcode != WSLAY_TEXT_FRAME) {
      ws_bad(s, NULL, WS_ERR_WRONG_FRAME, "moonwire.json takes text frames");
      return;
    }
    json_error_t err;
    msg = json_loadb((const char *)data, len, 0, &err);
  } else {
    if (opcode != WSLAY_BINARY_FRAME) {
      ws_bad(s, NULL, WS_ERR_WRONG_FRAME,
             "moonwire.msgpack takes binary frames");
      return;
    }
    msg = mw_codec_json_from_msgpack((const char *)data, len);
  }
  if (!msg) {
    ws_bad(s, NULL, WS_ERR_MALFORMED,
           s->proto == WS_PROTO_JSON ? "malformed JSON" : "malformed msgpack");
    return;
  }
  if (!json_is_object(msg)) {
    ws_bad(s, NULL, WS_ERR_MALFORMED, "message must be an object");
    json_decref(msg);
    return;
  }
  json_t *id = json_object_get(msg, "id");
  json_t *type = json_object_get(msg, "type");
  const char *t = json_string_value(type);
  if (id && !json_is_string(id)) {
    ws_bad(s, NULL, WS_ERR_INVALID, "id must be a string");
  } else if (!t) {
    ws_bad(s, id, WS_ERR_INVALID, "type must be a string");
  } else if (!s->authed && !ws_msg_first(s, msg, id, t)) {
    /* refused (the connection is closing) or answered (auth) */
  } else if (!strcmp(t, "subscribe")) {
    ws_msg_subscribe(s, msg, id);
  } else if (!strcmp(t, "unsubscribe")) {
    ws_msg_unsubscribe(s, msg, id);
  } else if (!strcmp(t, "publish")) {
    ws_msg_publish(s, msg, id);
  } else if (!strcmp(t, "ping")) {
    ws_session_send(s, ws_reply_new("pong", id));
  } else if (!strcmp(t, "auth")) {
    ws_reply_error(s, id, 400, "already authenticated");
  } else if (!strcmp(t, "presence")) {
    ws_msg_presence(s, msg, id);
  } else {
    ws_bad(s, id, WS_ERR_UNKNOWN_TYPE, "unknown message type");
  }
  json_decref(msg);
}
