/* The host table: each entry forwards to the core part that owns it. */
#include "host.h"

#include "client.h"
#include "conn.h"
#include "cors.h"
#include "event.h"
#include "http.h"
#include "hub.h"
#include "log.h"
#include "metrics.h"
#include "publish.h"
#include "server.h"

static int64_t host_config_int(const char *key, int64_t def) {
  return mw__config_int(mw__server()->cfg, key, def);
}

static const char *host_config_string(const char *key, const char *def) {
  return mw__config_string(mw__server()->cfg, key, def);
}

static uv_loop_t *host_worker_loop(mw_worker_t *w) {
  return &w->loop;
}

static unsigned host_worker_id(mw_worker_t *w) {
  return w->id;
}

static unsigned host_worker_count(void) {
  return mw__server()->nworkers;
}

static int host_http_route(mw_plugin_handle_t *self, const char *method,
                           const char *path, mw_route_fn fn) {
  return mw__server_route(mw__server(), method, path, fn, self);
}

static int host_conn_write(mw_conn_t *c, const void *data, size_t len,
                           int force) {
  return mw__conn_write(c, data, len, force);
}

static size_t host_conn_queued(const mw_conn_t *c) {
  return mw__conn_queued(c);
}

static int host_event_seal(mw_event_t *ev, uint64_t seq, const char *epoch) {
  return mw__event_seal(ev, seq, epoch);
}

static int host_event_parse(const char *json, size_t len, const char *epoch,
                            mw_event_t **out) {
  return mw__event_parse(json, len, epoch, out);
}

static int host_policy_has_connect(mw_worker_t *w) {
  return w->policy && mw__policy_has_connect(w->policy);
}

static const mw_host_v1_t host_table = {
    .struct_size = sizeof(mw_host_v1_t),
    .log = mw_log,
    .strerror = mw_strerror,
    .config_int = host_config_int,
    .config_string = host_config_string,
    .worker_loop = host_worker_loop,
    .worker_id = host_worker_id,
    .worker_count = host_worker_count,
    .http_route = host_http_route,
    .http_method = mw__http_method,
    .http_path = mw__http_path,
    .http_header = mw__http_header,
    .http_query = mw__http_query,
    .http_remote_addr = mw__http_remote_addr,
    .http_worker = mw__http_worker,
    .http_body = mw__http_body,
    .http_respond = mw__http_respond,
    .http_on_abort = mw__http_on_abort,
    .http_take = mw__http_take,
    .conn_write = host_conn_write,
    .conn_write_event = mw__conn_write_event,
    .conn_queued = host_conn_queued,
    .conn_close = mw__conn_close,
    .event_ref = mw_event_ref,
    .event_unref = mw_event_unref,
    .event_seal = host_event_seal,
    .event_parse = host_event_parse,
    .fanout = mw__server_fanout,
    .client_new = mw__client_new,
    .client_free = mw__client_free,
    .client_id = mw__client_id,
    .subscribe = mw__subscribe,
    .unsubscribe = mw__unsubscribe,
    .publish = mw__publish,
    .topic_position = mw__topic_position,
    .metric = mw__metric,
    .metric_add = mw__metric_add,
    .client_attach_request = mw__client_attach_request,
    .client_has_token = mw__client_has_token,
    .policy_has_connect = host_policy_has_connect,
    .client_connect = mw__client_connect,
    .client_error = mw__client_error,
    .client_user_id = mw__client_user_id,
    .client_tenant_id = mw__client_tenant_id,
    .client_disconnect = mw__client_disconnect,
    .subscribe_since = mw__subscribe_since,
    .client_position = mw__client_position,
    .http_cors = mw__cors_check,
    .presence = mw__presence_query,
    .client_set_kick = mw__client_set_kick,
};

const mw_host_v1_t *mw__host(void) {
  return &host_table;
}
