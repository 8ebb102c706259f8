/* mw_strerror: texts for MW_E* codes, libuv's for the rest. */
#include <uv.h>

#include "log.h"

const char *mw_strerror(int code) {
  switch (code) {
  case MW_OK:
    return "ok";
  case MW_EINVAL:
    return "invalid argument or malformed input";
  case MW_ENOMEM:
    return "out of memory";
  case MW_ENOTFOUND:
    return "not found";
  case MW_ELIMIT:
    return "limit reached";
  case MW_EUNAVAIL:
    return "storage unavailable";
  case MW_ECANCELED:
    return "cancelled";
  case MW_EABI:
    return "plugin ABI mismatch";
  case MW_EDENIED:
    return "denied";
  case MW_ETOOBIG:
    return "too large";
  case MW_EEXIST:
    return "already exists";
  case MW_ECLOSED:
    return "connection closed";
  default:
    if (code < 0 && code > -4096) return uv_strerror(code);
    return "unknown error";
  }
}
