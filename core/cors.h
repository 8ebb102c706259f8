/* CORS: which browser origins may use the server (config `cors.origins`;
 * default: the server's own origin and localhost), preflight answers. */
#ifndef MW_CORS_H
#define MW_CORS_H

#include <stddef.h>

#include "moonwire/host.h"

/* 0 when `req` has no Origin or an allowed one; then `headers` (NUL-terminated,
 * possibly empty) holds the Access-Control-* response lines. MW_EDENIED
 * otherwise. */
int mw__cors_check(const mw_http_request_t *req, char *headers, size_t len);

/* Answers an OPTIONS preflight: 204 with the allowed methods and headers, or
 * 403 for an origin that is not allowed. */
void mw__cors_preflight(mw_http_request_t *req);

#endif
