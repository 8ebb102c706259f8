/* Test plugin: declares a struct_size smaller than the ABI 1.0 minimum. */
#include "moonwire/plugin.h"

#include <stddef.h>

/* Stays below the v1.0 minimum whatever the struct grows to. */
_Static_assert(16 < offsetof(mw_plugin_v1_t, storage) + sizeof(void *),
               "short_struct must stay shorter than ABI 1.0 needs");

static int bad_init(const mw_host_v1_t *host, mw_plugin_handle_t *self,
                    void **state) {
  return 0;
}

/* The exported plugin struct, claiming to end before its name. */
__attribute__((visibility("default"))) const mw_plugin_v1_t mw_plugin_v1 = {
    .abi_major = MW_ABI_MAJOR,
    .abi_minor = MW_ABI_MINOR,
    .struct_size = 16, /* below the v1.0 minimum */
    .kind = MW_PLUGIN_TRANSPORT,
    .name = "short_struct",
    .version = "1.0",
    .init = bad_init,
};
