/* moonwire: the entry point. Parses the configuration and runs the server. */
#include <stdio.h>

#include "config.h"
#include "log.h"
#include "server.h"

int main(int argc, char **argv) {
  mw_config_t cfg;
  char err[512];
  int rc = mw__config_load(&cfg, argc, argv, err, sizeof err);
  if (rc != MW_CONFIG_RUN) {
    if (rc == MW_CONFIG_EXIT_USAGE) fprintf(stderr, "moonwire: %s\n", err);
    mw__config_free(&cfg);
    return rc == MW_CONFIG_EXIT_OK ? 0 : 2;
  }
  mw__log_setup(cfg.log_level, cfg.log_json);
  int code = mw__server_run(&cfg);
  mw__config_free(&cfg);
  return code;
}
