/*
 * region-balancer in C: prefer the backends tagged with the request's region,
 * else least connections over every eligible backend; ties go by the host's
 * pick sequence. The same choices as examples/plugins/rust/region-balancer.
 *
 * No generated bindings: the component model's canonical ABI is written out
 * by hand below (the import and export names wit-component expects, and the
 * memory layout of the records), so the only tools are clang, wasi-libc (for
 * malloc) and wasm-tools. See README.md.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define IMPORT(module, name) __attribute__((import_module(module), import_name(name)))
#define EXPORT(name) __attribute__((export_name(name)))

/* A `list<T>` or `string` as the canonical ABI lays it out: pointer, length. */
typedef struct {
    void *ptr;
    uint32_t len;
} list_t;

IMPORT("weir:plugin/pool@0.2.0", "[method]pool-view.eligible-slots")
extern void pool_view_eligible_slots(int32_t self, list_t *ret);
IMPORT("weir:plugin/pool@0.2.0", "[method]pool-view.eligible-active")
extern void pool_view_eligible_active(int32_t self, list_t *ret);
/* A borrowed handle handed to an export must be released before it returns. */
IMPORT("weir:plugin/pool@0.2.0", "[resource-drop]pool-view")
extern void pool_view_drop(int32_t self);

/* The host lowers arguments into memory it asks for here; they are ours to
 * free. An empty list or string gets no allocation (its pointer is only
 * aligned), hence `release`. */
EXPORT("cabi_realloc")
void *cabi_realloc(void *ptr, size_t old_size, size_t align, size_t new_size) {
    (void)old_size;
    if (new_size == 0) return (void *)align;
    void *p = realloc(ptr, new_size);
    if (!p) abort();
    return p;
}

static void release(void *ptr, uint32_t len) {
    if (len > 0) free(ptr);
}

/* record backend { slot: u32, address: string, weight: u32, priority: u32, tags: list<string> } */
typedef struct {
    uint32_t slot;
    list_t address;
    uint32_t weight;
    uint32_t priority;
    list_t tags;
} backend_t;
_Static_assert(sizeof(backend_t) == 28, "canonical ABI layout of backend");

/* result<T, error> in a return area: discriminant at 0, the choice or
 * error discriminant at 4, its payload (slot, or string pointer and length) at 8. */
static struct {
    uint8_t is_err, pad[3];
    uint8_t case_, pad2[3];
    uint32_t a, b;
} ret;

enum { ERROR_INVALID_CONFIG = 0, ERROR_UNAVAILABLE = 1 };
enum { CHOICE_SLOT = 0 };

static void *fail(uint8_t kind, const char *message) {
    ret.is_err = 1;
    ret.case_ = kind;
    ret.a = (uint32_t)(uintptr_t)message;
    ret.b = strlen(message);
    return &ret;
}

static void *ok(void) {
    memset(&ret, 0, sizeof ret);
    return &ret;
}

static char prefix[64] = "region=";

/* The backend lists of each pool, as set-backends handed them over. */
typedef struct {
    uint32_t pool;
    backend_t *backends;
    uint32_t len;
} pool_t;
static pool_t pools[64];
static uint32_t npools;

static void free_backends(backend_t *b, uint32_t len) {
    for (uint32_t i = 0; i < len; i++) {
        list_t *tags = b[i].tags.ptr;
        for (uint32_t t = 0; t < b[i].tags.len; t++) release(tags[t].ptr, tags[t].len);
        release(b[i].tags.ptr, b[i].tags.len);
        release(b[i].address.ptr, b[i].address.len);
    }
    release(b, len);
}

/* init: func(config: string) -> result<_, error>. Reads `"tag_prefix": "..."`. */
EXPORT("weir:plugin/balance@0.2.0#init")
void *balance_init(char *config, uint32_t len) {
    static const char key[] = "\"tag_prefix\"";
    char *end = config + len;
    for (char *p = config; p + sizeof key - 1 <= end; p++) {
        if (memcmp(p, key, sizeof key - 1) != 0) continue;
        p += sizeof key - 1;
        while (p < end && (*p == ' ' || *p == ':')) p++;
        if (p >= end || *p != '"') return fail(ERROR_INVALID_CONFIG, "tag_prefix: expected a string");
        char *start = ++p;
        while (p < end && *p != '"') p++;
        if (p >= end || (size_t)(p - start) >= sizeof prefix)
            return fail(ERROR_INVALID_CONFIG, "tag_prefix: expected a short string");
        memcpy(prefix, start, p - start);
        prefix[p - start] = 0;
        break;
    }
    release(config, len);
    return ok();
}

/* set-backends: func(pool: u32, backends: list<backend>) -> result<_, error> */
EXPORT("weir:plugin/balance@0.2.0#set-backends")
void *balance_set_backends(uint32_t pool, backend_t *backends, uint32_t len) {
    uint32_t i = 0;
    while (i < npools && pools[i].pool != pool) i++;
    if (i == npools) {
        if (npools == sizeof pools / sizeof pools[0]) return fail(ERROR_UNAVAILABLE, "too many pools");
        npools++;
    } else {
        free_backends(pools[i].backends, pools[i].len);
    }
    pools[i] = (pool_t){pool, backends, len};
    return ok();
}

static int tagged(const pool_t *p, uint32_t slot, const char *key, uint32_t key_len) {
    size_t plen = strlen(prefix);
    for (uint32_t i = 0; p && i < p->len; i++) {
        if (p->backends[i].slot != slot) continue;
        const list_t *tags = p->backends[i].tags.ptr;
        for (uint32_t t = 0; t < p->backends[i].tags.len; t++) {
            const char *s = tags[t].ptr;
            if (tags[t].len == plen + key_len && memcmp(s, prefix, plen) == 0 &&
                memcmp(s + plen, key, key_len) == 0)
                return 1;
        }
    }
    return 0;
}

/* pick: func(pool: borrow<pool-view>, ctx: pick-context, hash-key: option<string>) -> result<choice, error>
 * pick-context { pool: u32, eligible-count: u32, sequence: u64, client-hash: u64, eligible-mask: u64 }
 * is passed flat. */
EXPORT("weir:plugin/balance@0.2.0#pick")
void *balance_pick(int32_t view, uint32_t pool, uint32_t eligible_count, uint64_t sequence,
                   uint64_t client_hash, uint64_t eligible_mask, int32_t has_key, char *key,
                   uint32_t key_len) {
    (void)client_hash;
    (void)eligible_mask;
    if (eligible_count == 0) {
        if (has_key) release(key, key_len);
        pool_view_drop(view);
        return fail(ERROR_UNAVAILABLE, "no eligible backend");
    }
    list_t slots, active;
    pool_view_eligible_slots(view, &slots);
    pool_view_eligible_active(view, &active);
    const uint32_t *s = slots.ptr, *a = active.ptr;
    const pool_t *p = NULL;
    for (uint32_t i = 0; i < npools; i++)
        if (pools[i].pool == pool) p = &pools[i];

    /* Candidates: the tagged slots, else all; then the least active of them. */
    uint8_t *cand = calloc(slots.len ? slots.len : 1, 1);
    uint32_t ncand = 0;
    if (has_key && key_len > 0)
        for (uint32_t i = 0; i < slots.len; i++) ncand += cand[i] = (uint8_t)tagged(p, s[i], key, key_len);
    if (ncand == 0) memset(cand, 1, slots.len);
    uint32_t least = UINT32_MAX, tied = 0;
    for (uint32_t i = 0; i < slots.len; i++)
        if (cand[i] && a[i] < least) least = a[i];
    for (uint32_t i = 0; i < slots.len; i++)
        if (cand[i] && a[i] == least) tied++;
    uint32_t turn = (uint32_t)(sequence % tied), chosen = 0;
    for (uint32_t i = 0; i < slots.len; i++)
        if (cand[i] && a[i] == least && turn-- == 0) {
            chosen = s[i];
            break;
        }
    free(cand);
    release(slots.ptr, slots.len);
    release(active.ptr, active.len);
    if (has_key) release(key, key_len);
    pool_view_drop(view);
    ok();
    ret.case_ = CHOICE_SLOT;
    ret.a = chosen;
    return &ret;
}
