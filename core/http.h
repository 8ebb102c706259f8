/* HTTP/1.1 on a connection: llhttp parsing with limits, keep-alive,
 * pipelining (requests handled concurrently, answered in request order),
 * routing, responses, take-over. */
#ifndef MW_HTTP_H
#define MW_HTTP_H

#include <stddef.h>

#include "conn.h"
#include "moonwire/host.h"

/* Requests parsed ahead and outstanding (being handled or holding an
 * answer) per connection; past it reading stops until answers go out. */
#define MW_HTTP_PIPELINE 32

/* Answer bytes queued on a connection and not yet taken by its socket past
 * which parsing waits (a peer that pipelines and never reads holds at most
 * this much, plus one answer, in user space). */
#define MW_HTTP_QUEUE_AHEAD (256u * 1024u)

/* Starts HTTP mode on a new connection. */
void mw__http_start(mw_conn_t *c);

/* Bytes read in HTTP mode. */
void mw__http_on_data(mw_conn_t *c, const char *data, size_t len);

/* Some of c's queued bytes were written: parsing resumes if it waited for
 * that (called by conn.c, never from inside the HTTP code). */
void mw__http_on_drained(mw_conn_t *c);

/* The connection is gone: orphans every outstanding request (calling its
 * abort callback, if any), frees the state. */
void mw__http_on_close(mw_conn_t *c);

/* 1 if no request is outstanding (being handled or holding an answer). */
int mw__http_idle(const mw_conn_t *c);

/* Writes a complete response (status line, headers, body) on a connection
 * that has no parsed request (e.g. 503 at accept); then closes it. */
void mw__http_reject(mw_conn_t *c, int status, const char *reason);

/* Request accessors and answers: see the host table (moonwire/host.h). */
const char *mw__http_method(const mw_http_request_t *req);
const char *mw__http_path(const mw_http_request_t *req);
const char *mw__http_header(const mw_http_request_t *req, const char *lname);
const char *mw__http_query(const mw_http_request_t *req, const char *name);
/* The i-th header (lower-case name) or query parameter (decoded): 1 and the
 * pair, or 0 past the end. */
int mw__http_header_at(const mw_http_request_t *req, size_t i,
                       const char **name, const char **value);
int mw__http_query_at(const mw_http_request_t *req, size_t i, const char **name,
                      const char **value);
const char *mw__http_remote_addr(const mw_http_request_t *req);
mw_worker_t *mw__http_worker(const mw_http_request_t *req);
mw_bytes_t mw__http_body(const mw_http_request_t *req);
void mw__http_respond(mw_http_request_t *req, int status,
                      const char *content_type, const char *extra_headers,
                      const char *body, size_t len);
void mw__http_on_abort(mw_http_request_t *req, mw_abort_fn fn, void *ud);
mw_conn_t *mw__http_take(mw_http_request_t *req, const char *head,
                         size_t head_len, const mw_stream_handler_t *h,
                         void *ud);

/* Convenience for core handlers: a JSON body with the right type. */
void mw__http_respond_json(mw_http_request_t *req, int status,
                           const char *json);

/* The reason phrase of a status code. */
const char *mw__http_status_text(int status);

#endif
