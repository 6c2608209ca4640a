/* cgroup/getsockopt (BPF_PROG_TYPE_CGROUP_SOCKOPT, attach CGROUP_GETSOCKOPT).
 * Reads: getsockopt(SOL_IP, SO_ORIGINAL_DST) calls only; the socket's peer address and port
 *        (on the proxy's accepted socket that is the client's local end), origin_by_client.
 * Writes: the caller's buffer (a sockaddr_in with the original destination), optlen, and
 *         retval = 0 (replacing the kernel's ENOENT/ENOPROTOOPT when no conntrack NAT exists).
 * Any other option, or a peer we have no record of, passes through untouched. */
#include "maps.h"

struct dt_sockaddr_in {
    __u16 family;
    __u16 port;
    __u32 addr;
    __u8 zero[8];
};

int detour_getsockopt(struct bpf_sockopt *ctx)
{
    if (ctx->level != SOL_IP || ctx->optname != SO_ORIGINAL_DST)
        return 1;
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 1;
    if (sk->family != AF_INET)
        return 1;
    struct client_end end = {};
    end.ip4 = sk->dst_ip4;
    end.port = dt_ntohs((__u16)sk->dst_port); /* dst_port is network order */
    struct origin *orig = origin_by_client.lookup(&end);
    if (!orig)
        return 1;

    struct dt_sockaddr_in *out = ctx->optval;
    if ((void *)(out + 1) > ctx->optval_end)
        return 1; /* the caller's buffer is too small: leave the kernel's answer */
    out->family = AF_INET;
    out->port = orig->port;
    out->addr = orig->ip4;
    __builtin_memset(out->zero, 0, sizeof(out->zero));
    /* Two separate 32-bit stores: without the barrier clang merges them into one 64-bit
     * store, which the verifier rejects ("invalid bpf_context access off=32 size=8"). */
    ctx->optlen = sizeof(*out);
    asm volatile("" ::: "memory");
    ctx->retval = 0;
    return 1; /* 1 = return to userspace (0 would be EPERM) */
}
