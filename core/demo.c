/* Serves the embedded demo page, its script and style, and the client
 * module: see demo.h. */
#include "demo.h"

#include <stddef.h>
#include <string.h>

#include "http.h"

extern const unsigned char mw__demo_index_html[], mw__demo_demo_css[],
    mw__demo_demo_js[], mw__demo_moonwire_js[];
extern const size_t mw__demo_index_html_len, mw__demo_demo_css_len,
    mw__demo_demo_js_len, mw__demo_moonwire_js_len;

typedef struct demo_asset {
  const char *path, *type;
  const unsigned char *bytes;
  const size_t *len;
} demo_asset_t;

static const demo_asset_t assets[] = {
    {"/", "text/html; charset=utf-8", mw__demo_index_html,
     &mw__demo_index_html_len},
    {"/demo.css", "text/css; charset=utf-8", mw__demo_demo_css,
     &mw__demo_demo_css_len},
    {"/demo.js", "text/javascript; charset=utf-8", mw__demo_demo_js,
     &mw__demo_demo_js_len},
    {"/moonwire.js", "text/javascript; charset=utf-8", mw__demo_moonwire_js,
     &mw__demo_moonwire_js_len},
};

/* The page loads only its own files and talks only to its own origin. */
static const char headers[] =
    "Cache-Control: no-cache\r\n"
    "X-Content-Type-Options: nosniff\r\n"
    "Content-Security-Policy: default-src 'self'; connect-src 'self' ws: "
    "wss:; img-src 'self' data:\r\n";

static void demo_asset(mw_http_request_t *req, void *unused) {
  (void)unused;
  const char *path = mw__http_path(req);
  for (size_t i = 0; i < sizeof assets / sizeof assets[0]; i++)
    if (strcmp(path, assets[i].path) == 0) {
      mw__http_respond(req, 200, assets[i].type, headers,
                       (const char *)assets[i].bytes, *assets[i].len);
      return;
    }
  mw__http_respond_json(req, 404, "{\"error\":\"not found\"}");
}

void mw__demo_register(mw_server_t *s) {
  for (size_t i = 0; i < sizeof assets / sizeof assets[0]; i++)
    mw__server_route(s, "GET", assets[i].path, demo_asset, NULL);
}
