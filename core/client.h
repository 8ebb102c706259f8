/* A subscriber connection as the core sees it: its transport's delivery
 * callback, its subscriptions (hub.c), and its identity from the policy
 * (client.c): the request snapshot on_connect needs, the identity it gave,
 * the connection limits it holds, the reason of its last refusal. */
#ifndef MW_CLIENT_H
#define MW_CLIENT_H

#include <stddef.h>

#include "moonwire/host.h"
#include "policy.h"
#include "server.h"

typedef struct mw_sub mw_sub_t;
typedef struct mw_client_request mw_client_request_t;

struct mw_client {
  mw_worker_t *worker;
  const char *transport; /* in names[], after the id */
  mw_metric_t *conn_gauge;
  mw_deliver_fn deliver;
  void (*kick)(mw_client_t *c, const char *reason, void *ud);
  void *ud;
  mw_link_t link; /* in the worker's list of clients */
  mw_sub_t *subs; /* hub.c */
  size_t nsubs;
  mw_policy_identity_t ident;
  mw_client_request_t *request; /* until connected */
  char *err; /* the last refusal's reason (malloc'd), or NULL */
  int err_code;
  unsigned connected : 1;
  unsigned limits_held : 1;
  char id[]; /* "node-worker-number", then the transport's name */
};

/* See the host table (moonwire/host.h). */
mw_client_t *mw__client_new(mw_worker_t *w, const char *transport,
                            mw_deliver_fn deliver, void *ud);
void mw__client_free(mw_client_t **c);
void mw__client_disconnect(mw_client_t **c, const char *reason);
const char *mw__client_id(const mw_client_t *c);
void mw__client_attach_request(mw_client_t *c, const mw_http_request_t *req);
int mw__client_has_token(const mw_client_t *c);
int mw__client_connect(mw_client_t *c, const char *token, int *code);
const char *mw__client_error(const mw_client_t *c, int *code);
const char *mw__client_user_id(const mw_client_t *c);
const char *mw__client_tenant_id(const mw_client_t *c);
void mw__client_set_kick(mw_client_t *c,
                         void (*kick)(mw_client_t *c, const char *reason,
                                      void *ud));

/* Asks the transports to close every local client of `user_id`; returns how
 * many were asked. Worker thread. */
size_t mw__clients_kick_user(mw_worker_t *w, const char *user_id,
                             const char *reason);

/* Records a refusal (code, reason) on the client. */
void mw__client_set_error(mw_client_t *c, int code, const char *reason);

/* The worker's policy (NULL only in unit tests without one). */
mw_policy_t *mw__worker_policy(mw_worker_t *w);

/* Registers the client metrics (once, at start). */
void mw__client_metrics_init(void);

#endif
