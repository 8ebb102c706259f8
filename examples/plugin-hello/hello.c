/* An out-of-tree moonwire plugin: a transport that answers GET /hello with
 * the worker it ran on and the number of requests that worker served.
 * It uses nothing but the installed public headers (moonwire/plugin.h) and
 * reaches the server only through the host table. Build: see Makefile. */
#include <moonwire/plugin.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct hello_worker {
  const mw_host_v1_t *host;
  mw_worker_t *worker;
  unsigned long served;
} hello_worker_t;

static const mw_host_v1_t *host;
static mw_metric_t *m_hellos;

static void hello_route(mw_http_request_t *req, void *wstate) {
  hello_worker_t *hw = wstate;
  hw->served++;
  host->metric_add(m_hellos, 1);
  char body[128];
  int n = snprintf(body, sizeof body,
                   "{\"hello\":\"world\",\"worker\":%u,\"served\":%lu}",
                   host->worker_id(hw->worker), hw->served);
  host->http_respond(req, 200, "application/json", NULL, body, (size_t)n);
}

static int hello_init(const mw_host_v1_t *h, mw_plugin_handle_t *self,
                      void **state) {
  (void)state; /* no global state */
  host = h;
  m_hellos = h->metric(MW_METRIC_COUNTER, "hello_requests_total",
                       "Requests answered by the hello example plugin", NULL);
  h->log(MW_LOG_INFO, "hello", "example plugin ready on GET /hello");
  return h->http_route(self, "GET", "/hello", hello_route);
}

static int hello_worker_start(void *state, mw_worker_t *w, void **wstate) {
  (void)state;
  hello_worker_t *hw = calloc(1, sizeof *hw);
  if (!hw) return MW_ENOMEM;
  hw->host = host;
  hw->worker = w;
  *wstate = hw;
  return 0;
}

static void hello_worker_stop(void *wstate) {
  free(wstate);
}

__attribute__((visibility("default"))) const mw_plugin_v1_t mw_plugin_v1 = {
    MW_PLUGIN_V1_HEADER(MW_PLUGIN_TRANSPORT, "hello", "1.0.0"),
    .init = hello_init,
    .worker_start = hello_worker_start,
    .worker_stop = hello_worker_stop,
};
