/* CORS: see cors.h. */
#include "cors.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "http.h"
#include "metrics.h"
#include "server.h"

/* The host[:port] part of an origin ("https://a.example:8080" ->
 * "a.example:8080"). */
static const char *origin_authority(const char *origin) {
  const char *p = strstr(origin, "://");
  return p ? p + 3 : origin;
}

static int is_local(const char *authority) {
  static const char *const local[] = {"localhost", "127.0.0.1", "[::1]"};
  for (size_t i = 0; i < sizeof local / sizeof local[0]; i++) {
    size_t n = strlen(local[i]);
    if (strncasecmp(authority, local[i], n) == 0 &&
        (authority[n] == 0 || authority[n] == ':'))
      return 1;
  }
  return 0;
}

/* 1 if `origin` is in the comma-separated `list` ("*" allows all). */
static int in_list(const char *list, const char *origin) {
  size_t ol = strlen(origin);
  for (const char *p = list; *p;) {
    while (*p == ' ' || *p == ',')
      p++;
    const char *end = strchr(p, ',');
    size_t n = end ? (size_t)(end - p) : strlen(p);
    while (n && p[n - 1] == ' ')
      n--;
    if ((n == 1 && *p == '*') || (n == ol && strncasecmp(p, origin, n) == 0))
      return 1;
    p += n;
  }
  return 0;
}

static int origin_allowed(const mw_http_request_t *req, const char *origin) {
  const char *list = mw__config_string(mw__server()->cfg, "cors.origins", NULL);
  if (list && *list) return in_list(list, origin);
  const char *auth = origin_authority(origin);
  const char *host = mw__http_header(req, "host");
  if (host && strcasecmp(auth, host) == 0) return 1; /* same origin */
  return is_local(auth);
}

int mw__cors_check(const mw_http_request_t *req, char *headers, size_t len) {
  headers[0] = 0;
  const char *origin = mw__http_header(req, "origin");
  if (!origin) return 0;
  if (!origin_allowed(req, origin) || strpbrk(origin, "\r\n")) {
    static mw_metric_t *m_rej;
    if (!m_rej)
      m_rej = mw__metric(MW_METRIC_COUNTER, "moonwire_rejected_total",
                         "Requests or connections rejected, by reason",
                         "reason=\"cors_origin\"");
    mw__metric_add(m_rej, 1);
    return MW_EDENIED;
  }
  snprintf(headers, len,
           "Access-Control-Allow-Origin: %s\r\n"
           "Access-Control-Allow-Credentials: true\r\nVary: Origin\r\n",
           origin);
  return 0;
}

void mw__cors_preflight(mw_http_request_t *req) {
  char hdrs[1024];
  if (mw__cors_check(req, hdrs, sizeof hdrs) || !hdrs[0]) {
    mw__http_respond_json(req, 403, "{\"error\":\"origin not allowed\"}");
    return;
  }
  size_t n = strlen(hdrs);
  snprintf(hdrs + n, sizeof hdrs - n,
           "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n"
           "Access-Control-Allow-Headers: Authorization, Content-Type, "
           "Last-Event-ID, X-API-Key\r\n"
           "Access-Control-Max-Age: 600\r\n");
  mw__http_respond(req, 204, "text/plain", hdrs, "", 0);
}
