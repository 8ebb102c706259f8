/* moonwire error codes. Functions return 0 on success and a negative code on
 * failure: one of the MW_E* below, or a libuv error code passed through
 * (libuv's are negative errno values, all above -4096). */
#ifndef MOONWIRE_ERRNO_H
#define MOONWIRE_ERRNO_H

#define MW_OK 0
#define MW_EINVAL -10001    /* bad argument or malformed input */
#define MW_ENOMEM -10002    /* allocation sized by input failed */
#define MW_ENOTFOUND -10003 /* no such topic, route, plugin or key */
#define MW_ELIMIT -10004    /* a configured limit was reached */
#define MW_EUNAVAIL -10005  /* storage (or another dependency) unreachable */
#define MW_ECANCELED -10006 /* the operation was cancelled (shutdown) */
#define MW_EABI -10007      /* plugin ABI mismatch */
#define MW_EDENIED -10008   /* refused by policy */
#define MW_ETOOBIG -10009   /* input larger than its limit */
#define MW_EEXIST -10010    /* already there (e.g. already subscribed) */
#define MW_ECLOSED -10011   /* connection already closing */

#endif
