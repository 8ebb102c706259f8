/* Configuration: defaults, a Lua config file (--config), command-line flags
 * (a flag beats the file), and typed access for the core and plugins. */
#ifndef MW_CONFIG_H
#define MW_CONFIG_H

#include <stddef.h>
#include <stdint.h>

typedef struct mw_config_entry {
  char *key;   /* dotted: "limits.idle_timeout" */
  char *value; /* text; lists are comma-joined */
} mw_config_entry_t;

typedef struct mw_config {
  mw_config_entry_t *entries; /* owned */
  size_t count;
  /* Resolved from the entries by mw__config_load: */
  char listen_host[64];
  int listen_port;
  int workers;
  int log_level;
  int log_json;
} mw_config_t;

/* What mw__config_load decided. */
enum { MW_CONFIG_RUN = 0, MW_CONFIG_EXIT_OK = 1, MW_CONFIG_EXIT_USAGE = 2 };

/* Builds the configuration from defaults, the file named by --config and the
 * flags in argv (and env MOONWIRE_API_KEY). Returns MW_CONFIG_RUN, or
 * MW_CONFIG_EXIT_OK after printing --help/--version, or MW_CONFIG_EXIT_USAGE
 * with one line in `err`. `cfg` is the caller's; free with mw__config_free. */
int mw__config_load(mw_config_t *cfg, int argc, char **argv, char *err,
                    size_t errlen);

/* The text of a key, or `def` (owned by cfg). */
const char *mw__config_string(const mw_config_t *cfg, const char *key,
                              const char *def);

/* The integer value of a key, or `def` when unset or not a number. */
int64_t mw__config_int(const mw_config_t *cfg, const char *key, int64_t def);

/* Sets a key (copies both strings). */
void mw__config_set(mw_config_t *cfg, const char *key, const char *value);

void mw__config_free(mw_config_t *cfg);

#endif
