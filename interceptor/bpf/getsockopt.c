/* cgroup/getsockopt (BPF_PROG_TYPE_CGROUP_SOCKOPT, attach CGROUP_GETSOCKOPT).
 * Reads: getsockopt(SOL_IP, SO_ORIGINAL_DST) and getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)
 *        calls only; origin_store[socket], which sockops wrote on the proxy's accepted socket
 *        after checking that the record belongs to this connection.
 * Writes: the caller's buffer (a sockaddr_in, or a sockaddr_in6 — v4-mapped for an IPv4
 *         original asked on an IPv6 socket), optlen, retval = 0 (replacing the kernel's
 *         ENOENT/ENOPROTOOPT: there is no conntrack NAT entry), counters.
 * Any other option, or a socket without a record, passes through untouched. */
#include "maps.h"

struct dt_sockaddr_in {
    __u16 family;
    __u16 port;
    __u32 addr;
    __u8 zero[8];
};

struct dt_sockaddr_in6 {
    __u16 family;
    __u16 port;
    __u32 flowinfo;
    __u32 addr[4];
    __u32 scope_id;
};

/* Two separate 32-bit stores: without the barrier clang merges them into one 64-bit store,
 * which the verifier rejects ("invalid bpf_context access off=32 size=8"). */
static __always_inline void answer(struct bpf_sockopt *ctx, __u32 length)
{
    ctx->optlen = length;
    asm volatile("" ::: "memory");
    ctx->retval = 0;
    count(COUNT_ORIGINAL_DST, 1);
}

int detour_getsockopt(struct bpf_sockopt *ctx)
{
    int v4 = ctx->level == SOL_IP && ctx->optname == SO_ORIGINAL_DST;
    int v6 = ctx->level == SOL_IPV6 && ctx->optname == IP6T_SO_ORIGINAL_DST;
    if (!v4 && !v6)
        return 1;
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 1;
    struct origin *orig = origin_store.sk_storage_get(sk, 0, 0);
    if (!orig || !orig->valid)
        return 1;
    if (v4) {
        if (!is_v4_mapped(orig->ip))
            return 1; /* an IPv6 original has no sockaddr_in form */
        struct dt_sockaddr_in *out = ctx->optval;
        if ((void *)(out + 1) > ctx->optval_end)
            return 1; /* the caller's buffer is too small: leave the kernel's answer */
        out->family = AF_INET;
        out->port = orig->port;
        out->addr = orig->ip[3];
        __builtin_memset(out->zero, 0, sizeof(out->zero));
        answer(ctx, sizeof(*out));
        return 1;
    }
    struct dt_sockaddr_in6 *out6 = ctx->optval;
    if ((void *)(out6 + 1) > ctx->optval_end)
        return 1;
    out6->family = AF_INET6;
    out6->port = orig->port;
    out6->flowinfo = 0;
    out6->addr[0] = orig->ip[0];
    out6->addr[1] = orig->ip[1];
    out6->addr[2] = orig->ip[2];
    out6->addr[3] = orig->ip[3];
    out6->scope_id = 0;
    answer(ctx, sizeof(*out6));
    return 1; /* 1 = return to userspace (0 would be EPERM) */
}
