/* Plugin loader: good and bad plugins (built by tests/cmake/loader.cmake into
 * MWT_PLUGIN_DIR/{good,bad}) are loaded and refused with clear messages. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "plugin_loader.h"

#ifndef MWT_PLUGIN_DIR
#error "MWT_PLUGIN_DIR must name the test plugin build dir"
#endif

#define GOOD_SO MWT_PLUGIN_DIR "/good/good.so"
#define BAD(n) MWT_PLUGIN_DIR "/bad/" n ".so"
#define FIX "rebuild it against moonwire's headers"

static char host_abi[32]; /* "ABI 1.0" */

static void assert_contains(const char *hay, const char *needle) {
  if (strstr(hay, needle) == NULL)
    fail_msg("expected \"%s\" in message: %s", needle, hay);
}

/* Loads `path`, expects refusal `code` and a message with each of the
 * NULL-terminated strings. */
static void expect_refused(const char *path, int code, ...) {
  struct mw_plugin_handle *h = (void *)1;
  char err[1024] = "";
  const char *s;
  va_list ap;
  int rc;

  rc = mw__plugin_load_file(path, &h, err, sizeof err);
  assert_int_equal(rc, code);
  assert_null(h);
  print_message("  refused: %s\n", err);
  assert_contains(err, path);
  va_start(ap, code);
  while ((s = va_arg(ap, const char *)) != NULL)
    assert_contains(err, s);
  va_end(ap);
}

static void test_good(void **unused) {
  struct mw_plugin_handle *h = NULL;
  char err[512] = "";

  assert_int_equal(mw__plugin_load_file(GOOD_SO, &h, err, sizeof err), 0);
  assert_non_null(h);
  assert_string_equal(h->path, GOOD_SO);
  assert_non_null(h->dl);
  assert_int_equal(h->def.abi_major, MW_ABI_MAJOR);
  assert_int_equal(h->def.kind, MW_PLUGIN_TRANSPORT);
  assert_string_equal(h->def.name, "good");
  assert_non_null(h->def.init);
  assert_null(h->def.storage);
  assert_null(h->state);
  assert_int_equal(h->initialized, 0);
  mw__plugin_unload(h);
}

static void test_bad_major(void **unused) {
  expect_refused(BAD("bad_major"), MW_EABI, "'bad_major'", "ABI 2.0", host_abi,
                 FIX, NULL);
}

static void test_bad_minor(void **unused) {
  char newer[32];

  snprintf(newer, sizeof newer, "ABI %d.%d", MW_ABI_MAJOR, MW_ABI_MINOR + 1);
  expect_refused(BAD("bad_minor"), MW_EABI, "'bad_minor'", newer, host_abi, FIX,
                 NULL);
}

static void test_short_struct(void **unused) {
  /* The name lies past struct_size: the path names the plugin. */
  expect_refused(BAD("short_struct"), MW_EABI, "short struct", "struct_size 16",
                 "built for ABI", "speaks ABI", host_abi, FIX, NULL);
}

static void test_oversize(void **unused) {
#ifdef __GLIBC__ /* dladdr1 and RTLD_DL_SYMENT (an enum, not a macro) */
  expect_refused(BAD("oversize"), MW_EABI, "'oversize'",
                 "larger than the symbol", host_abi, FIX, NULL);
#else
  skip();
#endif
}

static void test_no_symbol(void **unused) {
  expect_refused(BAD("no_symbol"), MW_ENOTFOUND, MW_PLUGIN_SYMBOL,
                 "export `const mw_plugin_v1_t mw_plugin_v1`", host_abi, FIX,
                 NULL);
}

static void test_bad_kind(void **unused) {
  expect_refused(BAD("bad_kind"), MW_EABI, "'bad_kind'", "unknown kind 99",
                 host_abi, FIX, NULL);
}

static void test_missing_file(void **unused) {
  expect_refused(MWT_PLUGIN_DIR "/nope/absent.so", MW_ENOTFOUND,
                 "cannot be loaded", NULL);
}

/* --- mw__plugin_check on structs in memory ------------------------------ */

static int fake_init(const mw_host_v1_t *host, mw_plugin_handle_t *self,
                     void **state) {
  return 0;
}
static int fake_publish(void *w, mw_event_t *d, mw_store_publish_cb cb,
                        void *ud) {
  return 0;
}
static int fake_position(void *w, const char *t, mw_position_cb cb, void *ud) {
  return 0;
}
static int fake_history(void *w, const char *t, uint64_t s, size_t l,
                        mw_store_history_cb cb, void *ud) {
  return 0;
}
static int fake_healthy(void *w) {
  return 1;
}

static const mw_storage_v1_t fake_ops = {
    .struct_size = sizeof(mw_storage_v1_t),
    .publish = fake_publish,
    .position = fake_position,
    .history = fake_history,
    .healthy = fake_healthy,
};

static mw_plugin_v1_t fake_storage(void) {
  mw_plugin_v1_t p = {
      MW_PLUGIN_V1_HEADER(MW_PLUGIN_STORAGE, "fake", "1"),
      .init = fake_init,
      .storage = &fake_ops,
  };
  return p;
}

static void check_refused(const mw_plugin_v1_t *p, size_t symsize,
                          const char *what) {
  char err[1024] = "";

  assert_int_equal(mw__plugin_check(p, symsize, "/x/fake.so", err, sizeof err),
                   MW_EABI);
  print_message("  refused: %s\n", err);
  assert_contains(err, "/x/fake.so");
  assert_contains(err, host_abi);
  assert_contains(err, what);
  assert_contains(err, FIX);
}

static void test_check(void **unused) {
  mw_storage_v1_t ops = fake_ops;
  mw_plugin_v1_t p = fake_storage();
  char err[512] = "";

  assert_int_equal(
      mw__plugin_check(&p, sizeof p, "/x/fake.so", err, sizeof err), 0);
  assert_int_equal(mw__plugin_check(&p, 0, "/x/fake.so", err, sizeof err), 0);
  /* A struct of a minor we know, shorter than today's (reserved[] cut). */
  p.struct_size = offsetof(mw_plugin_v1_t, storage) + sizeof(void *);
  assert_int_equal(mw__plugin_check(&p, 0, "/x/fake.so", err, sizeof err), 0);
  p.struct_size = offsetof(mw_plugin_v1_t, storage);
  check_refused(&p, 0, "short struct");

  p = fake_storage();
  check_refused(&p, 4, "too small");
  p.init = NULL;
  check_refused(&p, 0, "no init");
  p = fake_storage();
  p.name = NULL;
  check_refused(&p, 0, "no name");
  p = fake_storage();
  p.kind = 0;
  check_refused(&p, 0, "unknown kind 0");
  p = fake_storage();
  p.storage = NULL;
  check_refused(&p, 0, "without storage operations");
  p.storage = &ops;
  ops.struct_size = offsetof(mw_storage_v1_t, healthy);
  check_refused(&p, 0, "short storage struct");
  ops = fake_ops;
  ops.history = NULL;
  check_refused(&p, 0, "storage operations incomplete");
  /* A transport needs no storage ops. */
  p = fake_storage();
  p.kind = MW_PLUGIN_TRANSPORT;
  p.storage = NULL;
  assert_int_equal(mw__plugin_check(&p, 0, "/x/fake.so", err, sizeof err), 0);
}

/* --- directories --------------------------------------------------------- */

typedef struct tmpdir {
  char path[64];
  char files[8][64];
  int nfiles;
} tmpdir_t;

static void tmp_make(tmpdir_t *t) {
  memset(t, 0, sizeof *t);
  strcpy(t->path, "/tmp/mwt_loader_XXXXXX");
  assert_non_null(mkdtemp(t->path));
}

/* Adds `name` to the dir: a symlink to `target`, or an empty file. */
static void tmp_add(tmpdir_t *t, const char *name, const char *target) {
  char *p = t->files[t->nfiles++];
  size_t dl = strlen(t->path), nl = strlen(name);

  assert_true(dl + 1 + nl < sizeof t->files[0]);
  memcpy(p, t->path, dl);
  p[dl] = '/';
  memcpy(p + dl + 1, name, nl + 1);
  if (target != NULL) {
    assert_int_equal(symlink(target, p), 0);
  } else {
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fclose(f);
  }
}

static void tmp_remove(tmpdir_t *t) {
  int i;

  for (i = 0; i < t->nfiles; i++)
    unlink(t->files[i]);
  rmdir(t->path);
}

static void test_dir_good(void **unused) {
  mw_plugin_list_t list = {0};
  char err[512] = "";
  tmpdir_t t;

  tmp_make(&t);
  tmp_add(&t, "good.so", GOOD_SO);
  tmp_add(&t, "README", NULL);     /* not *.so: ignored */
  tmp_add(&t, "old.so.bak", NULL); /* neither */
  assert_int_equal(mw__plugin_load_dir(t.path, &list, err, sizeof err), 0);
  assert_int_equal(list.count, 1);
  assert_non_null(mw__plugin_find(&list, MW_PLUGIN_TRANSPORT, "good"));
  assert_ptr_equal(mw__plugin_find(&list, MW_PLUGIN_TRANSPORT, "good"),
                   list.items[0]);
  assert_null(mw__plugin_find(&list, MW_PLUGIN_STORAGE, "good"));
  assert_null(mw__plugin_find(&list, MW_PLUGIN_TRANSPORT, "other"));
  mw__plugin_list_free(&list);
  assert_int_equal(list.count, 0);
  assert_null(list.items);
  tmp_remove(&t);
}

static void test_dir_one_bad(void **unused) {
  mw_plugin_list_t list = {0};
  char err[1024] = "";
  tmpdir_t t;

  tmp_make(&t);
  tmp_add(&t, "a_good.so", GOOD_SO); /* loads first, then is unloaded */
  tmp_add(&t, "b_bad_major.so", BAD("bad_major"));
  assert_int_equal(mw__plugin_load_dir(t.path, &list, err, sizeof err),
                   MW_EABI);
  print_message("  refused: %s\n", err);
  assert_int_equal(list.count, 0);
  assert_null(list.items);
  assert_contains(err, "b_bad_major.so");
  assert_contains(err, "ABI 2.0");
  assert_contains(err, host_abi);
  assert_contains(err, FIX);
  tmp_remove(&t);
}

static void test_dir_sorted(void **unused) {
  mw_plugin_list_t list = {0};
  char err[1024] = "";
  tmpdir_t t;

  /* readdir order is arbitrary; the first refusal by name is reported. */
  tmp_make(&t);
  tmp_add(&t, "z_bad_major.so", BAD("bad_major"));
  tmp_add(&t, "a_bad_kind.so", BAD("bad_kind"));
  tmp_add(&t, "m_no_symbol.so", BAD("no_symbol"));
  assert_int_equal(mw__plugin_load_dir(t.path, &list, err, sizeof err),
                   MW_EABI);
  assert_contains(err, "a_bad_kind.so");
  assert_int_equal(list.count, 0);
  tmp_remove(&t);
}

static void test_dir_duplicate(void **unused) {
  mw_plugin_list_t list = {0};
  char err[1024] = "";
  tmpdir_t t;

  tmp_make(&t);
  tmp_add(&t, "good.so", GOOD_SO);
  tmp_add(&t, "good_copy.so", GOOD_SO);
  assert_int_equal(mw__plugin_load_dir(t.path, &list, err, sizeof err),
                   MW_EEXIST);
  print_message("  refused: %s\n", err);
  assert_contains(err, "good_copy.so");
  assert_contains(err, "already");
  assert_int_equal(list.count, 0);
  tmp_remove(&t);
}

static void test_dir_empty_and_missing(void **unused) {
  mw_plugin_list_t list = {0};
  char err[512] = "";
  tmpdir_t t;

  tmp_make(&t);
  assert_int_equal(mw__plugin_load_dir(t.path, &list, err, sizeof err), 0);
  assert_int_equal(list.count, 0);
  mw__plugin_list_free(&list);
  tmp_remove(&t);
  assert_int_equal(mw__plugin_load_dir(t.path, &list, err, sizeof err),
                   MW_ENOTFOUND);
  assert_contains(err, t.path);
}

#ifdef MWT_MEMORY_PLUGIN
/* The real memory storage plugin passes the loader's checks. */
static void test_memory_plugin(void **unused) {
  struct mw_plugin_handle *h = NULL;
  char err[512] = "";

  assert_int_equal(mw__plugin_load_file(MWT_MEMORY_PLUGIN, &h, err, sizeof err),
                   0);
  assert_int_equal(h->def.kind, MW_PLUGIN_STORAGE);
  assert_string_equal(h->def.name, "memory");
  assert_non_null(h->def.storage);
  assert_non_null(h->def.storage->publish);
  mw__plugin_unload(h);
}
#endif

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_good),
      cmocka_unit_test(test_bad_major),
      cmocka_unit_test(test_bad_minor),
      cmocka_unit_test(test_short_struct),
      cmocka_unit_test(test_oversize),
      cmocka_unit_test(test_no_symbol),
      cmocka_unit_test(test_bad_kind),
      cmocka_unit_test(test_missing_file),
      cmocka_unit_test(test_check),
      cmocka_unit_test(test_dir_good),
      cmocka_unit_test(test_dir_one_bad),
      cmocka_unit_test(test_dir_sorted),
      cmocka_unit_test(test_dir_duplicate),
      cmocka_unit_test(test_dir_empty_and_missing),
#ifdef MWT_MEMORY_PLUGIN
      cmocka_unit_test(test_memory_plugin),
#endif
  };

  snprintf(host_abi, sizeof host_abi, "ABI %d.%d", MW_ABI_MAJOR, MW_ABI_MINOR);
  return cmocka_run_group_tests(tests, NULL, NULL);
}
