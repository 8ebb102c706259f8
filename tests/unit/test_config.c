/* Configuration: defaults, flags, the Lua file, precedence and errors
 * (core/config.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <uv.h>

#include "config.h"

static int load(mw_config_t *cfg, char *err, const char *const *args) {
  char *argv[16] = {"moonwire"};
  int argc = 1;
  while (args && args[argc - 1]) {
    argv[argc] = (char *)args[argc - 1];
    argc++;
  }
  return mw__config_load(cfg, argc, argv, err, 256);
}

static char *write_file(const char *text) {
  char *path = strdup("/tmp/mwcfgXXXXXX");
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  return path;
}

static void test_defaults(void **state) {
  mw_config_t cfg;
  char err[256];
  assert_int_equal(load(&cfg, err, NULL), MW_CONFIG_RUN);
  assert_string_equal(cfg.listen_host, "127.0.0.1");
  assert_int_equal(cfg.listen_port, 8080);
  /* one loop per core by default (SPEC §1) */
  unsigned cores = uv_available_parallelism();
  assert_int_equal(cfg.workers, cores > 64 ? 64 : cores);
  assert_string_equal(mw__config_string(&cfg, "storage", NULL), "memory");
  assert_int_equal(mw__config_int(&cfg, "limits.max_message_size", 0), 1048576);
  assert_int_equal(mw__config_int(&cfg, "limits.outbound_queue", 0), 4194304);
  assert_int_equal(mw__config_int(&cfg, "history.size", 0), 1000);
  assert_int_equal(mw__config_int(&cfg, "limits.idle_timeout", 0), 60);
  mw__config_free(&cfg);
}

static void test_flags_both_forms(void **state) {
  mw_config_t cfg;
  char err[256];
  const char *args[] = {"--listen",     "[::1]:9000", "--workers=3",
                        "--log-format", "json",       NULL};
  assert_int_equal(load(&cfg, err, args), MW_CONFIG_RUN);
  assert_string_equal(cfg.listen_host, "::1");
  assert_int_equal(cfg.listen_port, 9000);
  assert_int_equal(cfg.workers, 3);
  assert_int_equal(cfg.log_json, 1);
  mw__config_free(&cfg);
}

static void test_bad_flags_exit_2(void **state) {
  const char *cases[][3] = {
      {"--nope", NULL, NULL},        {"--workers", "zero", NULL},
      {"--workers", "0", NULL},      {"--listen", "nowhere", NULL},
      {"--log-level", "loud", NULL}, {"--listen", NULL, NULL},
      {"positional", NULL, NULL},    {"--log-format", "xml", NULL},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    mw_config_t cfg;
    char err[256];
    assert_int_equal(load(&cfg, err, cases[i]), MW_CONFIG_EXIT_USAGE);
    assert_true(strlen(err) > 0);
    assert_null(strchr(err, '\n')); /* one line */
    mw__config_free(&cfg);
  }
}

static void test_not_available_yet(void **state) {
  mw_config_t cfg;
  char err[256];
  char *path = write_file("return { limits = { message_rate = 10 } }");
  const char *args[] = {"--config", path, NULL};
  assert_int_equal(load(&cfg, err, args), MW_CONFIG_EXIT_USAGE);
  assert_non_null(strstr(err, "not available yet"));
  mw__config_free(&cfg);
  unlink(path);
  free(path);
}

static void test_file_and_precedence(void **state) {
  char *path =
      write_file("local port = 7000\n"
                 "return { listen = '127.0.0.1:' .. port, workers = 2,\n"
                 "  history = { size = 10, ttl = 60 },\n"
                 "  limits = { idle_timeout = 5 }, api_key = 'from-file' }\n");
  mw_config_t cfg;
  char err[256];
  const char *args[] = {"--config", path, "--api-key", "from-flag", NULL};
  assert_int_equal(load(&cfg, err, args), MW_CONFIG_RUN);
  assert_int_equal(cfg.listen_port, 7000);
  assert_int_equal(cfg.workers, 2);
  assert_int_equal(mw__config_int(&cfg, "history.size", 0), 10);
  assert_int_equal(mw__config_int(&cfg, "limits.idle_timeout", 0), 5);
  assert_string_equal(mw__config_string(&cfg, "api_key", NULL), "from-flag");
  mw__config_free(&cfg);
  unlink(path);
  free(path);
}

static void test_bad_files(void **state) {
  const char *texts[] = {
      "return {",                            /* syntax */
      "return 42",                           /* not a table */
      "return { wrokers = 2 }",              /* unknown key */
      "return { workers = 'two' }",          /* wrong type */
      "return { history = { size = 1.5 } }", /* not an integer */
      "error('boom')",                       /* runtime error */
      "os.execute('true') return {}",        /* sandboxed */
  };
  for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
    char *path = write_file(texts[i]);
    mw_config_t cfg;
    char err[256];
    const char *args[] = {"--config", path, NULL};
    assert_int_equal(load(&cfg, err, args), MW_CONFIG_EXIT_USAGE);
    assert_non_null(strstr(err, "config"));
    mw__config_free(&cfg);
    unlink(path);
    free(path);
  }
}

static void test_missing_file(void **state) {
  mw_config_t cfg;
  char err[256];
  const char *args[] = {"--config", "/nonexistent/moonwire.lua", NULL};
  assert_int_equal(load(&cfg, err, args), MW_CONFIG_EXIT_USAGE);
  mw__config_free(&cfg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_defaults),
      cmocka_unit_test(test_flags_both_forms),
      cmocka_unit_test(test_bad_flags_exit_2),
      cmocka_unit_test(test_not_available_yet),
      cmocka_unit_test(test_file_and_precedence),
      cmocka_unit_test(test_bad_files),
      cmocka_unit_test(test_missing_file),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
