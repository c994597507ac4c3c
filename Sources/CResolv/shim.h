#include <netinet/in.h>
#include <arpa/nameser.h>
#include <resolv.h>
#include <stdlib.h>
#include <string.h>

// res_ninit and res_nclose are macros over these names in glibc; give Swift plain functions, and a way to point a
// resolver state at one nameserver (for tests with an in-process DNS server).
static inline res_state ringside_res_open(void) {
    res_state state = calloc(1, sizeof(struct __res_state));
    if (state == NULL) return NULL;
    if (__res_ninit(state) != 0) { free(state); return NULL; }
    return state;
}

static inline void ringside_res_close(res_state state) {
    __res_nclose(state);
    free(state);
}

static inline void ringside_res_use_nameserver(res_state state, const struct sockaddr_in *address) {
    state->nscount = 1;
    memcpy(&state->nsaddr_list[0], address, sizeof(struct sockaddr_in));
}
