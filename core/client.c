/* Clients: identity, connect and disconnect; see client.h. */
#include "client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "conn_limits.h"
#include "http.h"
#include "hub.h"
#include "log.h"
#include "metrics.h"

struct mw_client_request {
  char *remote_addr;
  char *token;
  mw_policy_pair_t *headers, *query, *cookies;
  size_t nheaders, nquery, ncookies;
};

static mw_metric_t *m_rej_user, *m_rej_tenant, *m_rej_connect;

void mw__client_metrics_init(void) {
  m_rej_user = mw__metric(MW_METRIC_COUNTER, "moonwire_rejected_total",
                          "Requests or connections rejected, by reason",
                          "reason=\"max_connections_per_user\"");
  m_rej_tenant = mw__metric(MW_METRIC_COUNTER, "moonwire_rejected_total", NULL,
                            "reason=\"max_connections_per_tenant\"");
  m_rej_connect = mw__metric(MW_METRIC_COUNTER, "moonwire_rejected_total", NULL,
                             "reason=\"connect_denied\"");
}

mw_policy_t *mw__worker_policy(mw_worker_t *w) {
  return w->policy;
}

static mw_metric_t *gauge_for(const char *transport) {
  char labels[96];
  snprintf(labels, sizeof labels, "transport=\"%s\"", transport);
  return mw__metric(MW_METRIC_GAUGE, "moonwire_connections",
                    "Subscriber connections by transport", labels);
}

mw_client_t *mw__client_new(mw_worker_t *w, const char *transport,
                            mw_deliver_fn deliver, void *ud) {
  char id[96];
  int idlen = snprintf(id, sizeof id, "%s-%u-%llu", w->server->node_id, w->id,
                       (unsigned long long)mw__hub_next_client_number(w->hub));
  if (idlen < 0 || (size_t)idlen >= sizeof id) idlen = (int)sizeof id - 1;
  size_t tlen = strnlen(transport, 23); /* as long as a metric label may be */
  /* One allocation, sized to the names it holds. */
  mw_client_t *c = mw_xcalloc(1, sizeof *c + (size_t)idlen + 1 + tlen + 1);
  c->worker = w;
  c->deliver = deliver;
  c->ud = ud;
  c->ident.ref = -2; /* LUA_NOREF */
  memcpy(c->id, id, (size_t)idlen);
  char *t = c->id + idlen + 1;
  memcpy(t, transport, tlen);
  c->transport = t;
  c->conn_gauge = mw__hub_gauge(w->hub, c->transport, gauge_for);
  mw__metric_add(c->conn_gauge, 1);
  mw__list_push(&w->clients, &c->link);
  return c;
}

void mw__client_set_kick(mw_client_t *c,
                         void (*kick)(mw_client_t *c, const char *reason,
                                      void *ud)) {
  c->kick = kick;
}

size_t mw__clients_kick_user(mw_worker_t *w, const char *user_id,
                             const char *reason) {
  size_t n = 0;
  for (mw_link_t *l = w->clients.next, *next; l != &w->clients; l = next) {
    next = l->next;
    mw_client_t *c = MW_CONTAINER_OF(l, mw_client_t, link);
    if (c->kick && c->ident.user_id && strcmp(c->ident.user_id, user_id) == 0) {
      c->kick(c, reason, c->ud);
      n++;
    }
  }
  return n;
}

const char *mw__client_id(const mw_client_t *c) {
  return c->id;
}

/* --- the request snapshot ---------------------------------------------- */

static void pairs_free(mw_policy_pair_t *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free((char *)p[i].name);
    free((char *)p[i].value);
  }
  free(p);
}

static void request_free(mw_client_request_t *r) {
  if (!r) return;
  free(r->remote_addr);
  free(r->token);
  pairs_free(r->headers, r->nheaders);
  pairs_free(r->query, r->nquery);
  pairs_free(r->cookies, r->ncookies);
  free(r);
}

static void pair_push(mw_policy_pair_t **arr, size_t *n, const char *name,
                      size_t nlen, const char *value, size_t vlen) {
  *arr = mw_xrealloc(*arr, (*n + 1) * sizeof **arr);
  (*arr)[*n].name = mw_xstrndup(name, nlen);
  (*arr)[*n].value = mw_xstrndup(value, vlen);
  (*n)++;
}

/* "a=b; c=d" into pairs (at most 64). */
static void parse_cookies(mw_client_request_t *r, const char *s) {
  while (s && *s && r->ncookies < 64) {
    while (*s == ' ' || *s == ';')
      s++;
    const char *end = strchr(s, ';');
    if (!end) end = s + strlen(s);
    const char *eq = memchr(s, '=', (size_t)(end - s));
    if (eq && eq > s)
      pair_push(&r->cookies, &r->ncookies, s, (size_t)(eq - s), eq + 1,
                (size_t)(end - eq - 1));
    s = end;
  }
}

void mw__client_attach_request(mw_client_t *c, const mw_http_request_t *req) {
  request_free(c->request);
  mw_client_request_t *r = mw_xcalloc(1, sizeof *r);
  r->remote_addr = mw_xstrdup(mw__http_remote_addr(req));
  const char *name, *value;
  for (size_t i = 0; mw__http_header_at(req, i, &name, &value); i++)
    pair_push(&r->headers, &r->nheaders, name, strlen(name), value,
              strlen(value));
  for (size_t i = 0; mw__http_query_at(req, i, &name, &value); i++)
    pair_push(&r->query, &r->nquery, name, strlen(name), value, strlen(value));
  parse_cookies(r, mw__http_header(req, "cookie"));
  /* The token: ?token=, then Authorization: Bearer, then the cookie. */
  const char *tok = mw__http_query(req, "token");
  const char *auth = mw__http_header(req, "authorization");
  if ((!tok || !*tok) && auth && strncasecmp(auth, "Bearer ", 7) == 0)
    tok = auth + 7;
  for (size_t i = 0; (!tok || !*tok) && i < r->ncookies; i++)
    if (strcmp(r->cookies[i].name, "moonwire_token") == 0)
      tok = r->cookies[i].value;
  r->token = tok && *tok ? mw_xstrdup(tok) : NULL;
  c->request = r;
}

int mw__client_has_token(const mw_client_t *c) {
  return c->request && c->request->token;
}

/* --- connect / disconnect ---------------------------------------------- */

void mw__client_set_error(mw_client_t *c, int code, const char *reason) {
  c->err_code = code;
  free(c->err);
  /* At most 159 bytes, as the reason of an HTTP answer or a close. */
  c->err = mw_xstrndup(reason ? reason : "", reason ? strnlen(reason, 159) : 0);
}

int mw__client_connect(mw_client_t *c, const char *token, int *code) {
  if (c->connected) return 0;
  mw_policy_t *p = mw__worker_policy(c->worker);
  mw_client_request_t *r = c->request;
  mw_policy_connect_req_t req = {
      .transport = c->transport,
      .remote_addr = r ? r->remote_addr : "",
      .headers = r ? r->headers : NULL,
      .nheaders = r ? r->nheaders : 0,
      .query = r ? r->query : NULL,
      .nquery = r ? r->nquery : 0,
      .cookies = r ? r->cookies : NULL,
      .ncookies = r ? r->ncookies : 0,
      .token = token ? token : (r ? r->token : NULL),
  };
  mw_policy_result_t res;
  memset(&res, 0, sizeof res);
  mw__policy_connect(p, &req, c->id, &c->ident, &res);
  if (res.status != MW_POLICY_OK || res.verdict != MW_VERDICT_ALLOW) {
    /* A failed script's text (script:line) stays in the log. */
    mw__client_set_error(c, res.code ? res.code : 401,
                         res.status != MW_POLICY_OK ? "policy error"
                         : res.reason[0]            ? res.reason
                                                    : "unauthorized");
    mw__policy_result_clear(&res);
    mw__metric_add(m_rej_connect, 1);
    if (code) *code = c->err_code;
    return MW_EDENIED;
  }
  mw__policy_result_clear(&res);
  const mw_config_t *cfg = c->worker->server->cfg;
  int64_t max_user = mw__config_int(cfg, "limits.max_connections_per_user", 0);
  int64_t max_tenant =
      mw__config_int(cfg, "limits.max_connections_per_tenant", 0);
  if (c->ident.tenant_id) {
    int64_t rule = mw__policy_tenant_max_connections(p, c->ident.tenant_id);
    if (rule > 0 && (max_tenant == 0 || rule < max_tenant)) max_tenant = rule;
  }
  const char *which = NULL;
  if (mw__conn_limits_acquire(c->ident.user_id, c->ident.tenant_id, max_user,
                              max_tenant, &which)) {
    int is_user = strcmp(which, "user") == 0;
    mw__metric_add(is_user ? m_rej_user : m_rej_tenant, 1);
    char reason[160];
    snprintf(reason, sizeof reason, "too many connections for this %s", which);
    mw__client_set_error(c, 429, reason);
    mw__policy_identity_free(p, &c->ident);
    if (code) *code = 429;
    return MW_ELIMIT;
  }
  c->limits_held = 1;
  c->connected = 1;
  request_free(c->request);
  c->request = NULL;
  return 0;
}

const char *mw__client_error(const mw_client_t *c, int *code) {
  if (code) *code = c->err_code;
  return c->err ? c->err : "";
}

const char *mw__client_user_id(const mw_client_t *c) {
  return c->ident.user_id;
}

const char *mw__client_tenant_id(const mw_client_t *c) {
  return c->ident.tenant_id;
}

void mw__client_disconnect(mw_client_t **cp, const char *reason) {
  mw_client_t *c = *cp;
  *cp = NULL;
  if (!c) return;
  mw__hub_client_detach(c);
  mw__list_remove(&c->link);
  mw_policy_t *p = mw__worker_policy(c->worker);
  if (c->connected && p) mw__policy_disconnect(p, &c->ident, reason);
  if (c->limits_held)
    mw__conn_limits_release(c->ident.user_id, c->ident.tenant_id);
  if (p) mw__policy_identity_free(p, &c->ident);
  request_free(c->request);
  mw__metric_add(c->conn_gauge, -1);
  free(c->err);
  free(c);
}

void mw__client_free(mw_client_t **c) {
  mw__client_disconnect(c, "closed");
}
